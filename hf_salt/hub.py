"""Uploads to the Hugging Face Hub that fail in one line, after the model is safely saved on disk.

`Trainer.push_to_hub` creates the repo before it saves the model, and an offline machine (or one without a
token) then ends in a raw `ConnectError` traceback with nothing written. The hf-salt trainers and CLI save
first, then upload; when the upload cannot happen they raise :class:`HubUploadError`, whose message says why
(offline mode, no connection, no token / not allowed) and where the model is saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["HubUploadError", "hub_failure_reason", "upload_folder"]


class HubUploadError(RuntimeError):
    """The upload to the Hub could not happen; the model is saved locally (the message names the folder)."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return seen


def hub_failure_reason(err: BaseException | None = None, token: str | bool | None = None) -> str | None:
    """Why the Hub cannot take an upload, in words, or None when `err` is not a Hub access failure.

    Without `err`: what is known before trying (offline mode, no token), else None.
    """
    from huggingface_hub import get_token

    if err is None:
        if _offline():
            return "HF_HUB_OFFLINE=1 is set (offline mode)"
        if not token and not get_token():
            return "no Hugging Face token (log in with `hf auth login` or set HF_TOKEN)"
        return None
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    for e in _chain(err):
        if isinstance(e, OfflineModeIsEnabled) or (_offline() and isinstance(e, ConnectionError)):
            return "HF_HUB_OFFLINE=1 is set (offline mode)"
        if isinstance(e, LocalTokenNotFoundError):
            return "no Hugging Face token (log in with `hf auth login` or set HF_TOKEN)"
        if isinstance(e, HfHubHTTPError):
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                return f"the Hub refused the token (HTTP {status}): log in with a token that has write access"
            return None
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, (ConnectionError, TimeoutError)) or names & {"TransportError", "NetworkError"}:
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            return f"no connection to {endpoint} ({type(e).__name__}: {e})"
    return None


def failure_message(reason: str, folder: str | os.PathLike, repo_id: str | None = None) -> str:
    """The one line a failed upload ends with: what failed, why, where the model is, how to upload later."""
    folder = Path(folder).absolute()
    repo = repo_id or "<your-name>/<repo>"
    return (
        f"could not upload to the Hub{f' ({repo_id})' if repo_id else ''}: {reason}. The model is saved locally "
        f"at {folder}; upload it later with `hf upload {repo} {folder}`."
    )


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload model trained with hf-salt",
) -> Any:
    """Create `repo_id` if needed and upload the (complete, saved) `folder`; :class:`HubUploadError` when the
    Hub cannot be reached or refuses the token. Offline mode and a missing token are known before trying."""
    from huggingface_hub import HfApi

    reason = hub_failure_reason(token=token)
    if reason is not None:
        raise HubUploadError(failure_message(reason, folder, repo_id))
    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision
        )
    except Exception as err:
        reason = hub_failure_reason(err)
        if reason is None:
            raise
        raise HubUploadError(failure_message(reason, folder, repo_id)) from None


def take_push_request(args: Any) -> bool:
    """For the CLI: whether `--push_to_hub` was given, turning it off for the Trainer (which would contact the
    Hub before training and push checkpoints); the CLI uploads the finished model folder once, at the end.
    A reason known up front (offline mode, no token) is printed now, so it is no surprise after training."""
    wanted = bool(getattr(args, "push_to_hub", False))
    if wanted:
        args.push_to_hub = False
        reason = hub_failure_reason(token=getattr(args, "hub_token", None))
        if reason is not None:
            print(f"warning: --push_to_hub: {reason}; the model will be saved locally, the upload will fail.")
    return wanted


def push_cli_output(args: Any, folder: str | os.PathLike, prog: str) -> int:
    """For the CLI, after the local save is complete: upload `folder`; 0 on success, 1 with one line on stderr
    when the Hub cannot take it."""
    import sys

    repo_id = args.hub_model_id or Path(args.output_dir).absolute().name
    try:
        upload_folder(
            folder,
            repo_id,
            token=args.hub_token,
            private=args.hub_private_repo,
            revision=args.hub_revision,
        )
    except HubUploadError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"uploaded {folder} to the Hub: {repo_id}")
    return 0
