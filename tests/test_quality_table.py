from model.quality_table import QualitySettings, run_quality, to_markdown

from .conftest import tiny_generator


def test_quality_table_runs_end_to_end_on_a_tiny_generator():
    G = tiny_generator()
    s = QualitySettings(draws=2, n_test=6, synthetic_sizes=(8,), n_ceiling=8, unet_steps=3, inversion_steps=2,
                        members=2, n_labeled=4)
    report = run_quality(G, None, s, log=lambda m: None)
    methods = report["methods"]
    for name in ("unet_4_real", "interpreter_inversion", "interpreter_inversion_shifted", "unet_synthetic_8",
                 "unet_synthetic_8_shifted", "unet_8_real", "unet_8_real_shifted"):
        assert 0 <= methods[name]["miou_mean"] <= 100, name
    assert len(methods["unet_4_real"]["runs"]) == 2 and len(methods["unet_8_real"]["runs"]) == 1
    diagnostics = report["diagnostics"]
    for name in ("interpreter_generated_4", "interpreter_generated_4_shifted", "synthetic_label_agreement"):
        assert len(diagnostics[name]["runs"]) == 2 and 0 <= diagnostics[name]["miou_mean"] <= 100, name
    assert "| interpreter_inversion |" in to_markdown(report)
    assert "| synthetic_label_agreement (diagnostic) |" in to_markdown(report)
