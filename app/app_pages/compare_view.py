"""Views that compare: the methods against each other on one pair (rank agreement, integrated gradients'
completeness), the weight distributions across a dataset subset, and a training run against its base model
(one pair token by token, then the subset's distributions and preference margins)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from app import state
from app.app_pages import long_work
from app.app_pages.long_work import attribution, scores
from app.app_pages.pair_view import show_pair
from tiviz import analysis, viz
from tiviz.errors import TivizError
from tiviz.scoring import margin_summary

# ---------------------------------------------------------------------------------------------- methods


def show_agreement(table: pd.DataFrame, methods: Sequence[str]) -> None:
    """Spearman rank correlation between the methods' token weights (response tokens, mean over sides)."""
    from tiviz.compare import agreement_matrix, method_agreement

    if len(methods) < 2:
        st.info("Pick two or more methods to see how far they agree.")
        return
    per_seq = method_agreement(table, list(methods))
    matrix = agreement_matrix(per_seq, "spearman", list(methods))
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(viz.rank_correlation_figure(matrix), key="agreement_heatmap")
    with right:
        st.caption("1: the methods rank the response tokens identically; 0: unrelated; −1: reversed. "
                   "Ranks by weight (|score|), averaged over the chosen and the rejected response.")
        st.dataframe(per_seq.drop(columns=["pair_id"]), hide_index=True, key="agreement_table",
                     column_config={"spearman": st.column_config.NumberColumn(format="%.3f"),
                                    "kendall": st.column_config.NumberColumn(format="%.3f")})


def show_convergence(table: pd.DataFrame) -> None:
    """Integrated gradients' completeness check, shown rather than hidden."""
    conv = analysis.convergence_summary(table)
    if conv.empty:
        return
    worst = float(conv["relative_delta"].max())
    cols = st.columns(len(conv))
    for col, row in zip(cols, conv.itertuples(), strict=True):
        col.metric(f"{row.side}: delta / |f(x) − f(baseline)|", f"{row.relative_delta:.2%}",
                   help=f"delta {row.delta:.4g}; f(x) − f(baseline) = {row.f_x_minus_f_baseline:.4g}; "
                        f"f(x) = {row.f_x:.4g}")
    if worst > 0.05:
        st.warning(f"The attributions miss {worst:.1%} of f(x) − f(baseline) on one side: raise the number of "
                   "IG steps for a faithful split.")
    else:
        st.caption("Completeness holds: the token scores add up to f(x) − f(baseline) within "
                   f"{worst:.2%}.")


# ---------------------------------------------------------------------------------------------- distributions


def value_label(value: str) -> str:
    """The axis label of a table value column."""
    return viz.VALUE_LABELS.get(value, value)


def show_distributions(table: pd.DataFrame, kind: str, value: str, bins: int) -> None:
    """The weights' distribution per method and side, how concentrated they are, and where they sit."""
    st.plotly_chart(viz.distribution_figure(table, kind, value), key="dist_figure")  # type: ignore[arg-type]
    st.subheader("How concentrated are the weights?")
    summary = analysis.concentration(table)
    st.plotly_chart(viz.concentration_figure(summary), key="dist_concentration")
    with st.expander("Means per method and side", expanded=True):
        means = summary.groupby(["method", "side"])[["entropy", "top10_share"]].mean().reset_index()
        st.dataframe(means, hide_index=True, key="dist_concentration_table",
                     column_config={"entropy": st.column_config.NumberColumn("entropy (1 = uniform)", format="%.3f"),
                                    "top10_share": st.column_config.NumberColumn("top-10 % share", format="%.3f")})
    st.subheader("Where in the response is the weight?")
    st.plotly_chart(viz.position_profile_figure(table, bins), key="dist_profile")
    st.caption("Mean weight × response length by relative position: 1 is uniform. TI-DPO's Gaussian prior "
               "lifts the middle of the response; raw gradients and attention tend to favour the ends.")


# ---------------------------------------------------------------------------------------------- before / after


def show_before_after_pair(run: state.ModelChoice, base: state.ModelChoice, dataset: state.Dataset, pair_id: str,
                           method: str, value: str) -> None:
    """One pair under both models on one colour scale, their difference, and the run's per-token implicit
    reward."""
    before = attribution(base, dataset, [pair_id], [method], label="Before")
    after = attribution(run, dataset, [pair_id], [method], label="After")
    reward = attribution(run, dataset, [pair_id], ["implicit_reward"], label="Implicit reward")
    both = pd.concat([before, after])
    vmax = viz.shading_range(both[both["pair_id"] == pair_id], value)  # type: ignore[arg-type]
    st.markdown(f"**Before** ({state.md_literal(base.base)})")
    show_pair(before, pair_id, method, value, vmax=vmax, caption=" · before")
    st.markdown("**After** (trained run)")
    show_pair(after, pair_id, method, value, vmax=vmax, caption=" · after")
    st.markdown("**Change** (after − before; red: more weight after)")
    diff = analysis.weight_difference(before, after, value)  # type: ignore[arg-type]
    show_pair(diff, pair_id, f"{method}_change", "score", scale="diverging", caption="")
    st.markdown(f"**Per-token implicit reward** β (log π − log π_ref), π_ref the run's base model {state.md_literal(run.base)}")
    st.caption("What training changed, token by token: red tokens became more likely under the run, blue less. "
               "Before training it is 0 for every token (the policy is its own reference).")
    show_pair(reward, pair_id, "implicit_reward", "score", scale="diverging")


def show_training_weights(run: state.ModelChoice, dataset: state.Dataset, pair_id: str) -> None:
    """The token weights w_t the run's training used for the pair (`tiviz.training.used_weights`): chosen and
    rejected, at the start and the end side by side on one colour scale, with the weighting source named."""
    from tiviz.training.used_weights import METHOD, WHEN

    assert run.run is not None
    try:
        source = state.run_weight_source(run.run)
    except TivizError as err:
        st.info(f"No training weights to show for this run: {state.describe_error(err)}")
        return
    st.caption(state.md_literal(f"Weighting source: {source.label()}. w_t multiplies each response token's "
                                "log-ratio in the DPO term; 1 is plain DPO's weight (TI-DPO Eq. 7, docs/METHOD.md §2)."))
    if source.data_sha256 != dataset.key:
        if source.seeded_by_position:
            st.info("This run's random weights are seeded by each pair's position in its training data, and this "
                    "dataset is not its training file: pick the file the run trained on in the sidebar.")
            return
        st.caption("This dataset is not the run's training file: shown are the weights its source gives this pair.")
    tables = {}
    for when in WHEN:
        table = long_work.training_weights(run, dataset, pair_id, when)
        if table is None:
            return
        tables[when] = table
    vmax = viz.shading_range(pd.concat(tables.values()), "score")
    last = source.total_steps
    heads = st.columns(2)
    if source.follows_policy:
        heads[0].markdown("**Start** (step 1: the policy is the run's base model)")
        heads[1].markdown(f"**End** (the final model, after step {last})")
    else:
        heads[0].markdown("**Start** (step 1)")
        heads[1].markdown(f"**End** (step {last}, the last)")
    if not source.follows_policy:
        st.caption("This source does not follow the policy: "
                   + ("fixed weights read the same table at every step." if source.fixed else
                      "uniform weights never change." if source.weighting == "uniform" else
                      "random weights are a fresh draw at every step."))
    for side in ("chosen", "rejected"):
        cols = st.columns(2)
        for col, when in zip(cols, WHEN, strict=True):
            rows = tables[when][tables[when]["side"] == side]
            with col:
                st.html(viz.shaded_tokens_html(rows, value="score", scale="sequential", vmax=vmax,
                                               title=f"{side.capitalize()} response · {METHOD} · {when}"))
    shown = pd.concat(tables.values())
    over = bool((shown.loc[shown["in_response"], "score"].abs() > vmax * 1.000001).any())
    st.html(viz.legend_html(0.0, vmax, scale="sequential", label="w_t (the token's weight in training)",
                            clipped=over))


def show_before_after_dataset(run: state.ModelChoice, base: state.ModelChoice, dataset: state.Dataset,
                              pair_ids: Sequence[str], method: str) -> None:
    """The subset under both models (on demand): weight distributions overlaid, preference accuracy and
    margins before and after."""
    cached = (state.cached_attribution(base, dataset, pair_ids, [method]) is not None
              and state.cached_attribution(run, dataset, pair_ids, [method]) is not None)
    if not cached and not st.button(f"Compare {len(pair_ids)} pairs", key="ba_run_dataset", type="primary"):
        st.caption("Attributes the pairs under both models and scores their preferences.")
        return
    before = attribution(base, dataset, pair_ids, [method], label="Before")
    after = attribution(run, dataset, pair_ids, [method], label="After")
    st.plotly_chart(viz.before_after_figure(before, after, labels=("before", "after")), key="ba_dist")
    sb = scores(base, dataset, pair_ids)
    sa = scores(run, dataset, pair_ids)
    merged = sb[["pair_id", "logp_margin"]].merge(sa[["pair_id", "logp_margin", "reward_margin"]], on="pair_id",
                                                  suffixes=("_before", "_after"))
    before, after = margin_summary(merged["logp_margin_before"]), margin_summary(merged["logp_margin_after"])
    reward = margin_summary(merged["reward_margin"])
    c = st.columns(3)
    c[0].metric("Preference accuracy (log-prob margin > 0)", f"{after['accuracy']:.0%}",
                f"{after['accuracy'] - before['accuracy']:+.0%} vs before")
    c[1].metric("Mean log-prob margin", f"{after['mean_margin']:+.2f}",
                f"{after['mean_margin'] - before['mean_margin']:+.2f} vs before")
    c[2].metric("Reward accuracy (implicit reward margin > 0)", f"{reward['accuracy']:.0%}",
                help="β (log π − log π_ref) chosen minus rejected; before training it is 0 for every pair")
    fig = viz.margin_change_figure(merged.rename(columns={"logp_margin_before": "margin_before",
                                                          "logp_margin_after": "margin_after"}))
    st.plotly_chart(fig, key="ba_margins")
