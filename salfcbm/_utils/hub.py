"""Calls to the Hugging Face Hub whose offline and network failures become `HubUnavailableError`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from salfcbm.errors import HubUnavailableError

__all__ = ["hub_call", "hub_unavailable"]

T = TypeVar("T")

# transport failures of requests / httpx (and its forks), matched by name so neither has to be imported
_TRANSPORT = {"TransportError", "NetworkError", "ConnectError", "ConnectTimeout", "TimeoutException", "Timeout",
              "ProxyError", "SSLError"}


def hub_unavailable(what: str, error: BaseException) -> HubUnavailableError | None:
    """The `HubUnavailableError` for ``error`` raised while ``what`` talked to the Hub (None: not a reachability failure)."""
    from huggingface_hub import constants

    names = {c.__name__ for c in type(error).__mro__}
    if "OfflineModeIsEnabled" in names or (constants.HF_HUB_OFFLINE and isinstance(error, ConnectionError)):
        return HubUnavailableError(
            f"{what} needs the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE "
            "and run it again with a network connection.")
    if isinstance(error, (ConnectionError, TimeoutError)) or names & _TRANSPORT:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return HubUnavailableError(
            f"{what} could not reach the Hugging Face Hub at {constants.ENDPOINT} ({type(error).__name__}: {first}); "
            "check the network connection (and HF_ENDPOINT, or a proxy), then run it again.")
    return None


def hub_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; offline mode and network failures raise `HubUnavailableError` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        err = hub_unavailable(what, e)
        if err is None:
            raise
        raise err from e
