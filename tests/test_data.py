"""Text sources: the bundled calibration mixture shares nothing with evaluation text; roles never mix."""

import pytest

from come import corpora
from come.contamination import Index, overlapping, spans
from come.data import check_separate, load_text
from come.errors import ComeError


def test_near_duplicate_rule():
    a = "The quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree at noon."
    assert Index([a]).hits("Preface. " + a[4:80].upper() + "!")  # a shared 13-word span, case and punctuation aside
    assert not Index([a]).hits("The quick brown fox jumps over the lazy dog. Then it ran home to its den at dusk.")
    assert len(spans("one two three", 13)) == 1 and spans("", 13) == set()
    long_prefix = "x" * 200
    assert Index([long_prefix + " tail one"]).hits(long_prefix + " another tail")  # equal first 200 characters


def test_calibration_mixture_is_disjoint_from_every_evaluation_text():
    """No calibration document (of `mix`, the default) is a near-duplicate of an item of the seven zero-shot
    tasks, of wiki-passages' evaluation part or of any domain's evaluation part; recomputed here from the data,
    not read from the cache the library keeps."""
    index = corpora.evaluation_index()
    for name in corpora.CALIB_DOMAINS:
        # the documents the library reads (from its cache folder) are the data package's, parsed again here
        assert corpora.documents(name) == tuple(corpora.DOMAINS[name].load()), name
        docs = corpora.domain_docs(name, "calib")
        assert len(docs) > 50, name
        assert overlapping(docs, index) == [], name
    mixed = corpora.mix_docs("calib")
    assert overlapping(mixed, index) == []
    # every calibration domain is in the mixture, interleaved: the first six documents come from six domains
    firsts = {next(n for n in corpora.CALIB_DOMAINS if d in corpora.domain_docs(n, "calib")) for d in mixed[:6]}
    assert firsts == set(corpora.CALIB_DOMAINS)
    # the check can fail: BoolQ's own passages (the old calibration text) hit BoolQ items
    from come.data import wiki_passages

    assert len(overlapping(wiki_passages("calib")[:50], index)) == 50


def test_held_out_domains_are_evaluation_only_and_disjoint_from_calibration():
    calib = Index(corpora.mix_docs("calib"))
    for name in (*corpora.OOD_DOMAINS, *corpora.FINAL_DOMAINS):
        docs = corpora.domain_docs(name, "eval")
        assert sum(len(d) for d in docs) > 200_000, name  # enough for 16 windows of 512 tokens
        assert overlapping(docs, calib) == [], name
        with pytest.raises(ComeError, match="held-out evaluation text"):
            load_text(name, "calib")
    assert set(corpora.OOD_DOMAINS).isdisjoint(corpora.CALIB_DOMAINS)


def test_the_final_suite_is_set_aside_from_the_ood_suite_and_never_calibrated_on():
    from come.eval.ppl import expand_sources

    assert len(corpora.FINAL_DOMAINS) == 5
    assert set(corpora.FINAL_DOMAINS).isdisjoint(corpora.OOD_DOMAINS)
    assert set(corpora.FINAL_DOMAINS).isdisjoint(corpora.CALIB_DOMAINS)
    assert expand_sources("ood,final") == [*corpora.OOD_DOMAINS, *corpora.FINAL_DOMAINS]
    ood = Index(d for n in corpora.OOD_DOMAINS for d in corpora.domain_docs(n, "eval"))
    for name in corpora.FINAL_DOMAINS:  # no set-aside text repeats one of the suite choices were made on
        assert overlapping(corpora.domain_docs(name, "eval"), ood) == [], name
    with pytest.raises(ComeError, match="part of the 'final' suite"):
        check_separate("papers", [], "--calib-data", "--ppl-data")


def test_one_file_in_both_roles_is_refused(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("some text")
    with pytest.raises(ComeError, match="both as --calib-data and as --ppl-data"):
        check_separate(str(f), ["wiki-passages", str(tmp_path / "." / "t.txt")], "--calib-data", "--ppl-data")
    check_separate(str(f), ["wiki-passages", "ood"], "--calib-data", "--ppl-data")  # different texts: fine
    check_separate("mix", ["mix"], "--calib-data", "--ppl-data")  # a named source: disjoint parts
    with pytest.raises(ComeError, match="never calibrated or trained on"):
        check_separate("code", [], "--calib-data", "--ppl-data")


def test_ood_stands_for_the_held_out_domains_and_their_geometric_mean():
    from come.eval.ppl import expand_sources, ood_geomean

    assert expand_sources("wiki-passages,ood") == ["wiki-passages", *corpora.OOD_DOMAINS]
    assert expand_sources(["ood", "code", " "]) == list(corpora.OOD_DOMAINS)  # no repeats, blanks ignored
    ppl = {d: {"ppl": v} for d, v in zip(corpora.OOD_DOMAINS, (2.0, 8.0, 4.0, 1.0))}
    assert ood_geomean(ppl) == pytest.approx(64 ** 0.25)
    assert ood_geomean({"wiki-passages": {"ppl": 3.0}}) is None  # only when every held-out domain was measured


def test_eval_reports_the_ood_geometric_mean_when_every_held_out_domain_was_measured():
    from come.eval.report import flat_metrics

    ppl = {d: {"ppl": v} for d, v in zip(corpora.OOD_DOMAINS, (2.0, 8.0, 4.0, 1.0))}
    flat = flat_metrics({"ppl": {"wiki-passages": {"ppl": 5.0}, **ppl}})
    assert flat["ppl/ood (geo. mean)"] == pytest.approx(64 ** 0.25)
    assert "ppl/ood (geo. mean)" not in flat_metrics({"ppl": {"code": {"ppl": 2.0}}})


def test_domain_documents_are_kept_in_the_cache_folder_and_a_broken_file_is_rebuilt(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("COME_CACHE", str(tmp_path))
    corpora.documents.cache_clear()
    try:
        fresh = corpora.documents("math")
        (path,) = (tmp_path / "corpora").rglob("math.json")
        assert fresh == tuple(corpora.DOMAINS["math"].load()) == tuple(json.loads(path.read_text()))
        path.write_text(json.dumps(["planted"]))
        corpora.documents.cache_clear()
        assert corpora.documents("math") == ("planted",)  # read back, not parsed again
        path.write_text("{not json")
        corpora.documents.cache_clear()
        assert corpora.documents("math") == fresh  # unreadable: parsed again and rewritten
        assert tuple(json.loads(path.read_text())) == fresh
    finally:
        corpora.documents.cache_clear()
