"""The trace_integrity bench part runs at a tiny size and lands its figures and target."""

from ade_train.bench import trace_integrity
from ade_train.bench.parts import load_parts


def test_trace_integrity_part_at_tiny_size(tmp_path):
    assert trace_integrity.main(["--records", "30", "--writes", "4", "--out", str(tmp_path)]) == 0
    (part,) = load_parts(tmp_path)
    f = part["figures"]
    assert f["records"] == 30 and f["writes"] == 4
    assert f["open_cpu_s"] >= 0 and f["write_all_or_nothing_cpu_ms"] > 0 and f["write_two_step_cpu_ms"] > 0
    assert part["markdown"].startswith("## Trace integrity")
    assert part["targets"][0]["target"].startswith("writer open")
