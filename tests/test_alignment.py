"""The response alignment: segments cover both sides, shared stretches are equal, differing ones are not."""

import itertools

import pandas as pd

from tiviz.alignment import align_tokens, shared_tokens, token_status


def test_two_spans_differ_rest_shared():
    c = [1, 2, 3, 9, 4, 5, 6, 7, 8]
    r = [1, 2, 3, 10, 11, 4, 5, 6, 12, 8]
    segs = align_tokens(c, r)
    assert [s.kind for s in segs] == ["same", "differ", "same", "differ", "same"]
    assert segs[1].chosen == (3, 4) and segs[1].rejected == (3, 5)
    assert segs[3].chosen == (7, 8) and segs[3].rejected == (8, 9)
    # end to end, in order
    assert segs[0].chosen[0] == 0 and segs[-1].chosen[1] == len(c) and segs[-1].rejected[1] == len(r)
    for a, b in itertools.pairwise(segs):
        assert a.chosen[1] == b.chosen[0] and a.rejected[1] == b.rejected[0]
    for s in segs:
        same = c[s.chosen[0]:s.chosen[1]] == r[s.rejected[0]:s.rejected[1]]
        assert same == (s.kind == "same")


def test_identical_and_disjoint():
    assert [s.kind for s in align_tokens([1, 2], [1, 2])] == ["same"]
    same_c, same_r = token_status([1, 2], [3, 4, 5])
    assert not same_c.any() and not same_r.any() and len(same_r) == 3


def test_shared_tokens_on_a_table():
    rows = []
    for side, ids in (("chosen", [7, 1, 2, 3]), ("rejected", [7, 1, 5, 3])):
        for m in ("gradient", "tidpo"):
            for pos, t in enumerate(ids):
                rows.append({"pair_id": "p", "side": side, "position": pos, "token_id": t, "method": m,
                             "in_response": pos > 0})
    df = pd.DataFrame(rows)
    got = shared_tokens(df)
    # prompt row never shared; position 2 differs; positions 1 and 3 shared, for every method
    assert not got[df.position == 0].any()
    assert not got[df.position == 2].any()
    assert got[df.position.isin([1, 3])].all()
