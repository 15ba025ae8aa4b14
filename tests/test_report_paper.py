"""The paper's published numbers are matched to our runs by scale, quantization format and optimizer name."""

from spam_bench.reports.paper import paper_name, published


def test_paper_numbers_follow_scale_format_and_optimizer_names():
    bf16, source, approx = published("llm", "paper-130m", {"lr": 0.001})
    assert bf16["SPAM"] == 23.36 and bf16["Adam"] == 24.91 and "Table 2" in source and not approx
    int4, source, _ = published("llm4bit", "paper-350m", {"format": "w4a4"})
    assert int4["SPAM"] == 20.19 and "INT4" in source
    assert published("llm4bit", "paper-60m", {"format": "w4a4"})[2]  # only Figure 1 has 60M: approximate
    assert published("llm", "tiny", {}) is None and published("rl", "paper", {"env": "Hopper-v5"})[0]["SPAM"] == 3300
    assert [paper_name(o, c) for o, c in (("adamw", None), ("adamw", 1.0), ("adam_clip", None), ("po:lion", None))] == [
        "Adam",
        "Adam + GradClip",
        "Adam + GradClip",
        None,
    ]
