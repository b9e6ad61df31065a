"""Smoke test of ``benchmarks/long_context.py`` at toy sizes: every part runs, the report,
plot and RESULTS.md section are written (and rewritten in place), the suite keeps the section.
Nothing here asserts a speed; the memory ratios at real sizes are in benchmarks/RESULTS.md."""

from __future__ import annotations

import json

from benchmarks import long_context as LC
from benchmarks import suite

TINY = {
    "ts": [32, 64],
    "d": 8,
    "block": 16,
    "n": 64,
    "dm": 8,
    "vs": [64, 128],
    "chunk": 16,
    "chunks": [16],
    "v_chunks": 64,
    "time_ts": [32],
    "time_v": 64,
}


def test_long_context_parts_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(LC, "QUICK", TINY)
    (tmp_path / "RESULTS.md").write_text("# results\n<!-- notes -->\nkept\n<!-- /notes -->\n")
    res = LC.main(["--quick", "--out", str(tmp_path)])
    att, head = res["attention"], res["head"]["over_v"]
    assert [r["T"] for r in att] == TINY["ts"] and [r["V"] for r in head] == TINY["vs"]
    hand, auto = att[-1]["flash_attention (hand)"], att[-1]["autodiff (materialised)"]
    assert 0 < hand["temp_bytes"] < auto["temp_bytes"]
    for r in head:  # 4 chunks: the op and its variant hold a quarter of the logits autodiff does
        assert r["chunks"] == 4 and r["ratio"] > 1
        assert r["linear_cross_entropy (hand)"]["flops"] > 0
    timed = res["time"]["attention"][0]
    assert timed["flash_attention (hand)"]["median_s"] > 0
    assert json.loads((tmp_path / "long_context.json").read_text())["quick"] is True
    assert (tmp_path / "long_context.png").stat().st_size > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count(LC.SECTION_BEGIN) == 1 and "kept" in text and "| 64 |" in text
    LC.write_section(str(tmp_path / "RESULTS.md"), LC.markdown(res))  # rewritten in place
    assert (tmp_path / "RESULTS.md").read_text().count(LC.SECTION_BEGIN) == 1
    kept = suite._other_sections(str(tmp_path / "RESULTS.md"))  # what a suite rewrite keeps
    assert kept.strip().startswith(LC.SECTION_BEGIN) and "kept" not in kept


def test_flash_gemm_flops_counts_the_causal_blocks():
    """4 query blocks of a causal T = S: 1 + 2 + 3 + 4 = 10 of the 16 blocks are computed."""
    one_block = 7 * 2.0 * 16 * 16 * 8
    assert LC._flash_gemm_flops(64, 8, 1, 16) == 10 * one_block
    assert LC._flash_gemm_flops(60, 8, 2, 16) == 2 * 10 * one_block  # ragged: still 10 blocks
