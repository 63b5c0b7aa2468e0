"""Label Studio REST through label-studio-sdk: annotations in, predictions and tasks out.

Every failure becomes :class:`LabelStudioError` with the URL, the status and what to check.
"""

from __future__ import annotations

import json
from typing import Any, Iterator


class LabelStudioError(ConnectionError):
    """Label Studio could not be reached or refused a request."""


_HINTS = {401: "check LABEL_STUDIO_API_KEY (and that legacy tokens are enabled if it is one)",
          403: "the API key's user lacks access to this project",
          404: "the project or task does not exist"}


def _plain(obj: Any) -> dict:
    if isinstance(obj, dict):
        return obj
    for attr in ("model_dump", "dict"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    raise TypeError(f"cannot convert {type(obj).__name__} to a dict")


class LabelStudioClient:
    def __init__(self, url: str, api_key: str) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.ls = LabelStudio(base_url=self.url, api_key=api_key, timeout=60)

    def _call(self, what: str, fn, *args, **kwargs):
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            hint = _HINTS.get(e.status_code or 0, "see Label Studio's logs")
            raise LabelStudioError(f"Label Studio at {self.url} answered {e.status_code} to {what}: "
                                   f"{str(e.body)[:300]} — {hint}") from e
        except (httpx.HTTPError, OSError) as e:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} for {what} ({type(e).__name__}: {e}); "
                                   "check LABEL_STUDIO_URL and that Label Studio is running") from e

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for raw requests (images); refreshes personal access tokens."""
        return {"Authorization": self._call("authentication", self.ls._client_wrapper.get_headers)["Authorization"]}

    def label_config(self, project: int) -> str:
        return self._call(f"GET project {project}", self.ls.projects.get, id=project).label_config

    def iter_tasks(self, project: int, only_annotated: bool = False) -> Iterator[dict]:
        what = f"GET tasks of project {project}"
        pager = self._call(what, self.ls.tasks.list, project=project, fields="all",
                           only_annotated=only_annotated or None, page_size=200)
        it = iter(pager)
        while True:   # later pages are fetched lazily: their errors get the same translation
            task = self._call(what, next, it, None)
            if task is None:
                return
            yield _plain(task)

    def annotated_tasks(self, project: int) -> list[tuple[dict, dict]]:
        """(task, its latest non-cancelled annotation) for every annotated task of the project."""
        out = []
        for task in self.iter_tasks(project, only_annotated=True):
            anns = [a for a in (task.get("annotations") or []) if not a.get("was_cancelled")]
            if anns:
                latest = max(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
                out.append((task, latest))
        return out

    def tasks_by_id(self, project: int, ids: list[int]) -> list[dict]:
        wanted = set(ids)
        found = {t["id"]: t for t in self.iter_tasks(project) if t["id"] in wanted}
        return [found[i] for i in ids if i in found]

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        """Bulk import [{task, result, score, model_version}] (one request; ~1,000 per second)."""
        self._call(f"import {len(predictions)} predictions into project {project}",
                   self.ls.projects.import_predictions, id=project, request=predictions)

    def ensure_local_storage(self, project: int, path: str, title: str) -> None:
        """The project's Local Storage connection for ``path`` (a folder under Label Studio's document
        root), created unless one exists."""
        storage = self.ls.import_storage.local
        for st in self._call(f"list local storages of project {project}", storage.list, project=project):
            if getattr(st, "path", None) == path:
                return
        self._call(f"create local storage {path} for project {project}", storage.create, project=project, path=path,
                   use_blob_urls=True, title=title)

    def set_webhook_headers(self, project: int, url: str, headers: dict[str, str]) -> int:
        """Make the project's webhook to ``url`` send ``headers`` (merged into its existing ones); create
        the webhook (all actions, with payload) when Label Studio has none for that URL. Returns its id."""
        what = f"webhooks of project {project}"
        for hook in self._call(f"list {what}", self.ls.webhooks.list, project=str(project)):
            hook = _plain(hook)
            if hook.get("url") == url and hook.get("project") in (project, None):
                merged = {**(hook.get("headers") or {}), **headers}
                self._call(f"update webhook {hook['id']} of project {project}", self.ls.webhooks.update,
                           hook["id"], url=url, headers=merged, is_active=True)
                return int(hook["id"])
        created = _plain(self._call(f"create a webhook for project {project}", self.ls.webhooks.create, url=url,
                                    project=project, headers=headers, send_payload=True, send_for_all_actions=True))
        return int(created["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        """Bulk import tasks (with optional "predictions"); returns the new task ids.

        The same request as label-studio-sdk's ``projects.import_tasks``, but the body is serialised with
        ``json.dumps``: the SDK's generic encoder walks every RLE byte in Python and took most of the
        time of a 500-task import (0.8 s of JSON encoding vs 0.06 s)."""
        import httpx

        what = f"import {len(tasks)} tasks into project {project}"
        body = json.dumps(tasks, separators=(",", ":")).encode()
        headers = {**self.auth_headers(), "Content-Type": "application/json"}
        resp = self._call(what, httpx.post, f"{self.url}/api/projects/{project}/import",
                          params={"return_task_ids": "true"}, content=body, headers=headers, timeout=300)
        if resp.status_code >= 400:
            hint = _HINTS.get(resp.status_code, "see Label Studio's logs")
            raise LabelStudioError(f"Label Studio at {self.url} answered {resp.status_code} to {what}: "
                                   f"{resp.text[:300]} — {hint}")
        return list(resp.json().get("task_ids") or [])
