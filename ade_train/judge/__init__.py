"""``ade-judge``: turn logged production traces into training data by filling their judge labels.

Judges (``Judge`` protocol in ``base.py``): a local VLM with VIEScore prompts (``vlm.py``), an
OpenAI-compatible API (``openai_judge.py``), imported human labels (``human.py``) and the
synthetic world's exact judge (``testbed_judge.py``). ``run.py`` drives a resumable, journaled
judging run; ``agree.py`` measures agreement between two labelings. See docs/judge.md.
"""

from ade_runtime.stats import spearman

from .agree import agreement, cohen_kappa
from .base import AttemptRef, CostSummary, Judge, JudgeFailure, JudgeItem, JudgeResult, Usage
from .human import HumanJudge, LabelProblem
from .journal import JOURNAL_NAME, Journal, read_journal
from .run import SUMMARY_NAME, format_summary, judge_traces
from .spec import SPEC_FORMS, build_judge
from .viescore import DEFAULT_PASS_THRESHOLD, MalformedAnswer, combine, parse_answer, pq_prompt, sc_prompt

__all__ = [
    "DEFAULT_PASS_THRESHOLD",
    "JOURNAL_NAME",
    "SPEC_FORMS",
    "SUMMARY_NAME",
    "AttemptRef",
    "CostSummary",
    "HumanJudge",
    "Journal",
    "Judge",
    "JudgeFailure",
    "JudgeItem",
    "JudgeResult",
    "LabelProblem",
    "MalformedAnswer",
    "Usage",
    "agreement",
    "build_judge",
    "cohen_kappa",
    "combine",
    "format_summary",
    "judge_traces",
    "parse_answer",
    "pq_prompt",
    "read_journal",
    "sc_prompt",
    "spearman",
]
