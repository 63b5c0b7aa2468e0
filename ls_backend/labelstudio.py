"""Start a local Label Studio 1.23.2 non-interactively (tests and the demo), and wait until it answers."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

SCRUBBED = ("HOST", "PORT", "USERNAME", "PASSWORD", "DEBUG")


def wait_for(predicate, timeout: float, what: str, every: float = 2.0):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_label_studio() -> str | None:
    """The label-studio executable: $LABEL_STUDIO_BIN, the project's .venv-ls, or PATH."""
    candidates = [os.environ.get("LABEL_STUDIO_BIN"), str(Path(__file__).resolve().parents[1] / ".venv-ls" / "bin" /
                                                          "label-studio"), shutil.which("label-studio")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@dataclass
class LabelStudioProcess:
    url: str
    username: str
    password: str
    token: str
    data_dir: Path
    document_root: Path
    process: subprocess.Popen | None
    log_path: Path

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_label_studio(data_dir: str | Path, port: int | None = None, username: str = "admin@dgan.local",
                       password: str | None = None, token: str | None = None,
                       document_root: str | Path | None = None, timeout_s: float = 400.0) -> LabelStudioProcess:
    """Start Label Studio on 127.0.0.1:port with SQLite in ``data_dir``; legacy tokens and local files on.

    First start on a fresh data dir migrates the database (~2 min on 2 cores); a restart takes ~10 s."""
    exe = find_label_studio()
    if exe is None:
        raise FileNotFoundError("label-studio is not installed: `python3 -m venv .venv-ls && "
                                ".venv-ls/bin/pip install label-studio==1.23.2`, or set LABEL_STUDIO_BIN")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root = Path(document_root or data_dir / "files").resolve()
    document_root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    creds = data_dir / "dgan-credentials.txt"
    if creds.exists():   # a restart must reuse what the first start created the user with
        username, password, token = creds.read_text().split()
    password = password or secrets.token_urlsafe(12)
    token = token or secrets.token_hex(20)
    creds.write_text(f"{username} {password} {token}\n")
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": username, "LABEL_STUDIO_PASSWORD": password, "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
    })
    log_path = data_dir / "label-studio.log"
    proc = subprocess.Popen([exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    ls = LabelStudioProcess(f"http://127.0.0.1:{port}", username, password, token, data_dir, document_root, proc,
                            log_path)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with code {proc.returncode}; see {log_path}")
        try:
            if requests.get(ls.url + "/health", timeout=2).status_code == 200:
                # /health answers before the API is ready to authenticate: wait for the token to work.
                r = requests.get(ls.url + "/api/projects", headers={"Authorization": f"Token {token}"}, timeout=5)
                if r.status_code == 200:
                    return ls
        except requests.RequestException:
            pass
        time.sleep(2)
    ls.stop()
    raise TimeoutError(f"Label Studio did not answer on {ls.url} within {timeout_s:.0f} s; see {log_path}")
