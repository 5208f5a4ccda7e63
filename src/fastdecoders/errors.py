"""The one exception type users see: a clear, single-line message about bad input."""


class FastDecodersError(ValueError):
    """Bad input: the message says what was expected and what came. The CLI prints it and exits with code 2."""


def require_finite(tensor, what: str) -> None:
    """Raise ``FastDecodersError`` if ``tensor`` (a torch tensor) holds NaN or ±Inf: ``what`` names it in the message.

    NaN pixels would otherwise be written as black (uint8 conversion), NaN weights saved, NaN metrics reported.
    """
    if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
        bad = int((~tensor.isfinite()).sum())
        raise FastDecodersError(f"{what} holds {bad} non-finite values (NaN/Inf) of {tensor.numel()}")
