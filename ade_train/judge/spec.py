"""``--judge SPEC`` -> a judge: ``testbed``, ``vlm:<id or path>``, ``openai:<model>``, ``human:<file>``."""

from __future__ import annotations

from ade_runtime.errors import InputError

from .base import Judge
from .viescore import DEFAULT_PASS_THRESHOLD

SPEC_FORMS = ("testbed", "vlm:<hf id or local path>", "openai:<model>", "human:<file.csv|file.jsonl>")


def build_judge(
    spec: str,
    *,
    pass_threshold: float = DEFAULT_PASS_THRESHOLD,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    box_format: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    rps: float = 2.0,
    timeout_s: float = 60.0,
    max_retries: int = 4,
) -> Judge:
    """Build the judge a SPEC names; options that do not apply to that judge are ignored."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "testbed" and not arg:
        from .testbed_judge import TestbedJudge

        return TestbedJudge()
    if kind == "vlm" and arg:
        from .vlm import VLMJudge, VLMJudgeConfig, VLMRuntime

        cfg = VLMJudgeConfig(
            model=arg,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            pass_threshold=pass_threshold,
            box_format=box_format or "auto",
        )
        return VLMJudge.from_pretrained(cfg, VLMRuntime(device=device, dtype=dtype))
    if kind == "openai" and arg:
        from .openai_judge import OpenAIJudge, OpenAIJudgeConfig

        cfg_o = OpenAIJudgeConfig(
            model=arg,
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            rps=rps,
            pass_threshold=pass_threshold,
            box_format=box_format or "unit",
        )
        return OpenAIJudge(cfg_o)
    if kind == "human" and arg:
        from .human import HumanJudge

        return HumanJudge(arg, pass_threshold=pass_threshold)
    raise InputError(f"--judge {spec!r} is not a judge spec; use one of: {', '.join(SPEC_FORMS)}")
