"""The progress line every long step prints: count, rate, elapsed and an ETA until the last item."""

import io

from ade_runtime.progress import format_seconds, progress


def test_progress_lines_carry_an_eta_until_done():
    out = io.StringIO()
    assert list(progress(range(20), desc="work", stream=out)) == list(range(20))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # a line every 10% off a terminal: CI logs stay short
    assert all(ln.startswith("work: ") and "/s, " in ln for ln in lines)
    assert all("ETA" in ln for ln in lines[:-1]) and "ETA" not in lines[-1]
    assert lines[-1].startswith("work: 20/20")


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
