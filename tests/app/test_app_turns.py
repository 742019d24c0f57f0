"""A long attribution request takes the shared compute lock in turns, so another session's single pair gets
through before it ends (issue: one 500-pair Distributions request blocked every other session)."""

from __future__ import annotations

import threading

import numpy as np

from app import state


def test_a_single_pair_gets_through_a_long_request(app_env, tiny_model_folder, monkeypatch):
    monkeypatch.setattr(state, "TURN_PAIRS", 1)
    fresh = state.ResultCache()  # nothing computed before
    monkeypatch.setattr(state, "result_cache", lambda: fresh)
    ds = state.load_sample("sample: test")
    ids = [p.id for p in ds.pairs]
    long_ids, single = ids[:12], ids[-1:]
    base = state.base_choice()
    state.get_model(base)  # loaded before the race, so neither thread pays for it
    finished: list[str] = []
    started = threading.Event()
    tables = {}

    def long_request() -> None:
        tables["long"] = state.attribution(base, ds, long_ids, ["gradient"],
                                           progress=lambda f, _m: started.set() if f > 0 else None)
        finished.append("long")

    def single_request() -> None:
        started.wait(60)
        tables["single"] = state.attribution(base, ds, single, ["gradient"])
        finished.append("single")

    threads = [threading.Thread(target=long_request), threading.Thread(target=single_request)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert finished == ["single", "long"]
    # taking turns changes nothing in the result: every pair, the same rows as one request of those pairs alone
    long = tables["long"]
    assert sorted(long["pair_id"].unique()) == sorted(long_ids)
    alone = state.attribution(base, ds, long_ids[3:4], ["gradient"])
    mine = long[long["pair_id"] == long_ids[3]].reset_index(drop=True)
    np.testing.assert_allclose(mine["score"].to_numpy(), alone["score"].to_numpy(), rtol=1e-5)
