"""Why a checkpoint did not load, in one line that says what to do.

transformers and huggingface_hub report a missing cache entry, a gated or unknown repository
and a checkpoint with its own code as multi-line OSErrors and ValueErrors; a user needs the
hub id, the cause and the fix (a local directory, a login, `trust_remote_code`).
"""

from __future__ import annotations


def _one_line(err: BaseException) -> str:
    """The error's own message, first line, without the quotes a KeyError adds."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:300].rstrip(". ") if lines else type(err).__name__


def load_failure(err: BaseException, path: str, revision: str | None, adapter: type) -> str:
    """One line saying why `adapter` could not load the checkpoint and what to do about it."""
    from huggingface_hub import errors as hub

    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__

    def raised(*kinds: type) -> bool:
        return any(isinstance(e, kinds) for e in chain)

    if raised(hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled):
        return (f"model {path!r} is neither a local directory nor in the hub cache, and the "
                f"hub cannot be reached (offline); where it can, run `hf download {path} "
                "--local-dir DIR`, then give model.path=DIR")
    if raised(hub.GatedRepoError):
        return (f"model {path!r} is gated on the hub: accept its licence on its hub page, "
                "then log in (`hf auth login`)")
    if raised(hub.RevisionNotFoundError):
        return f"model {path!r} has no revision {revision!r} on the hub"
    if raised(hub.RepositoryNotFoundError):
        return (f"model {path!r}: no such hub repository (or it is private) and no such "
                "local directory")
    full = " ".join(str(e) for e in chain)
    hint = ""
    if "trust_remote_code" in full or "custom code" in full:
        hint = ("; it ships its own modelling code: set model.trust_remote_code=true if you "
                "trust that code")
    elif "does not recognize this architecture" in full:
        hint = "; a newer transformers may know its architecture"
    return (f"model {path!r} (revision {revision!r}) cannot be loaded by {adapter.__name__} "
            f"({adapter.model_class.__name__}): {_one_line(err)}; `mibench models` lists the "
            f"supported families{hint}")
