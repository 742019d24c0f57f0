"""Attribution quality: plausibility (rationale overlap), faithfulness (perturbation) and agreement, each
beside a random ranking of the same tokens. Definitions: docs/EVALUATION.md.

    from tiviz.evaluation import evaluate
    ev = evaluate(load_model(), "sample_data/test.jsonl", "gradient,attention,tidpo")
    print(ev.to_text()); ev.write("eval/")
"""

from tiviz.evaluation.faithfulness import (
    CURVE_FRACTIONS,
    ERASER_FRACTIONS,
    SequenceCurves,
    faithfulness_curves,
    leave_one_out,
    margin_scores,
    perturbed_targets,
    ranking,
    reference_embedding,
    summarise,
    top_counts,
)
from tiviz.evaluation.plausibility import (
    average_precision,
    expected_random_ap,
    expected_random_hit,
    hit_at_k,
    rationale_labels,
    rationale_spans,
)
from tiviz.evaluation.run import (
    SCORE_COLUMNS,
    Evaluation,
    TableSequence,
    evaluate,
    format_scores,
    read_scores,
    table_sequences,
)

__all__ = [
    "CURVE_FRACTIONS",
    "ERASER_FRACTIONS",
    "SCORE_COLUMNS",
    "Evaluation",
    "SequenceCurves",
    "TableSequence",
    "average_precision",
    "evaluate",
    "expected_random_ap",
    "expected_random_hit",
    "faithfulness_curves",
    "format_scores",
    "hit_at_k",
    "leave_one_out",
    "margin_scores",
    "perturbed_targets",
    "ranking",
    "rationale_labels",
    "rationale_spans",
    "read_scores",
    "reference_embedding",
    "summarise",
    "table_sequences",
    "top_counts",
]
