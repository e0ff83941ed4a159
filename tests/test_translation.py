"""Translation: corpus formats and their errors, the split, batches (reversal, padding, buckets),
masking in the model, an end-to-end run on a tiny corpus, and a run on a slice of real Tatoeba."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from benchmark.config import load_preset
from benchmark.runner import RunOptions, run
from datamodules.parallel import LengthBuckets, Pair, ParallelTextDataModule, collate, hash_split, read_corpus
from datamodules.vocab import SPECIALS, WordVocab
from tasks.nn import decoding, text_metrics
from tasks.nn.errors import DataError
from tasks.text_generation import Decoded
from tasks.translator import Translator, decay_factor, detokenize, group_by_source
from tests.conftest import REAL_DATA_ROOT, find_run, need_real_data

EN = ["I am here .", "You are tall .", "He runs .", "We eat bread .", "They sing songs .", "She is happy .",
      "The cat sleeps .", "I like tea .", "It is cold .", "We are friends ."]
FR = ["Je suis ici .", "Tu es grand .", "Il court .", "Nous mangeons du pain .", "Ils chantent des chansons .",
      "Elle est heureuse .", "Le chat dort .", "J'aime le thé .", "Il fait froid .", "Nous sommes amis ."]


def write_tab(path, n=400, extra_column=True):
    """Tatoeba's layout: English<TAB>French<TAB>attribution, sentences repeated with numbers so the
    hash split has material for every part."""
    lines = []
    for i in range(n):
        en, fr = EN[i % len(EN)], FR[i % len(FR)]
        lines.append(f"{en[:-2]} {i % 7}.\t{fr[:-2]} {i % 7}." + ("\tCC-BY 2.0 (France) #1 (x) & #2 (y)" if extra_column else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tab_parallel_and_sgm_formats(tmp_path):
    write_tab(tmp_path / "tab.txt", n=3)
    assert read_corpus({"tab": "tab.txt"}, tmp_path, "en-fr")[0] == [("I am here 0.", "Je suis ici 0."),
                                                                     ("You are tall 1.", "Tu es grand 1."),
                                                                     ("He runs 2.", "Il court 2.")]
    (tmp_path / "a.en").write_text("Hello.\nGood night.\n")
    (tmp_path / "a.fr").write_text("Bonjour.\nBonne nuit.\n")
    assert read_corpus({"src": "a.en", "ref": str(tmp_path / "a.fr")}, tmp_path, "en-fr")[0][1] == ("Good night.", "Bonne nuit.")
    sgm = '<refset setid="x" srclang="any" trglang="fr">\n<doc docid="d" sysid="ref">\n<seg id="1">L&apos;homme &amp; la mer</seg>\n<seg id="2">Fin</seg>\n</doc>\n</refset>\n'
    (tmp_path / "t.fr.sgm").write_text(sgm)
    (tmp_path / "t.en.sgm").write_text(sgm.replace("L&apos;homme &amp; la mer", "The man &amp; the sea").replace("Fin", "End"))
    assert read_corpus({"src": "t.en.sgm", "ref": "t.fr.sgm"}, tmp_path, "en-fr")[0] == [
        ("The man & the sea", "L'homme & la mer"), ("End", "Fin")]


def test_bad_corpora_name_file_and_line(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.fr").write_text("un\ndeux\n")
    with pytest.raises(DataError, match=r"misaligned.*a\.en has 3 lines.*a\.fr has 2"):
        read_corpus({"src": "a.en", "ref": "a.fr"}, tmp_path, "en-fr")
    (tmp_path / "bad.txt").write_bytes("Hi.\tSalut.\nCafé.\t".encode() + "Café.".encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid UTF-8"):
        read_corpus({"tab": "bad.txt"}, tmp_path, "en-fr")
    (tmp_path / "notab.txt").write_text("Hi.\tSalut.\nno tab here\n")
    with pytest.raises(DataError, match=r"notab\.txt:2: expected 'source<TAB>target'"):
        read_corpus({"tab": "notab.txt"}, tmp_path, "en-fr")
    with pytest.raises(DataError, match=r"missing\.txt: not found"):
        read_corpus({"tab": "missing.txt"}, tmp_path, "en-fr")


def test_empty_pairs_are_skipped_and_counted(tmp_path, caplog):
    (tmp_path / "a.en").write_text("one\n\nthree\n")
    (tmp_path / "a.fr").write_text("un\ndeux\ntrois\n")
    assert read_corpus({"src": "a.en", "ref": "a.fr"}, tmp_path, "en-fr")[0] == [("one", "un"), ("three", "trois")]
    assert "skipped 1 pairs with an empty side (first at line 2)" in caplog.text


def test_hash_split_is_fixed_and_keeps_a_source_in_one_part():
    pairs = [(f"sentence {i % 50}", f"phrase {i}") for i in range(500)]
    a = hash_split(pairs, 0.1, 0.2, "salt")
    b = hash_split(list(reversed(pairs)), 0.1, 0.2, "salt")  # file order does not matter
    assert {k: sorted(v) for k, v in a.items()} == {k: sorted(v) for k, v in b.items()}
    sources = {k: {s for s, _ in v} for k, v in a.items()}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["valid"]
    assert sum(map(len, a.values())) == 500 and all(a.values())
    assert hash_split(pairs, 0.1, 0.2, "other salt") != a


def test_collate_reverses_source_and_pads_targets():
    pairs = [Pair([4, 5, 6], [7, 8], "a b c", "x y"), Pair([9, 10, 11], [12], "d e f", "z")]
    b = collate(pairs, pad=0, bos=2, eos=3, reverse_source=True)
    assert b["src"].T.tolist() == [[6, 5, 4], [11, 10, 9]]
    assert b["tgt_in"].T.tolist() == [[2, 7, 8], [2, 12, 0]]
    assert b["tgt_out"].T.tolist() == [[7, 8, 3], [12, 3, 0]]
    assert int(b["num_tokens"]) == 5
    assert collate(pairs, 0, 2, 3, reverse_source=False)["src"].T.tolist() == [[4, 5, 6], [9, 10, 11]]


def test_length_buckets_one_source_length_per_batch_and_even_ranks():
    lengths = [1 + (i * 7) % 9 for i in range(300)]
    sampler = LengthBuckets(lengths, 8, shuffle=True, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ranks = [list(LengthBuckets(lengths, 8, True, 1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    assert not set(map(tuple, ranks[0])) & set(map(tuple, ranks[1]))


def test_vocab_specials_and_unk():
    v = WordVocab.build([["b", "a", "b"], ["c", "b"]], max_size=6)
    assert v.itos[:4] == list(SPECIALS) and v.itos[4:] == ["b", "a"]
    assert v.encode(["b", "zzz"]) == [4, v.unk]
    assert v.decode([v.bos, 4, 5, v.eos, 4]) == ["b", "a"]
    assert WordVocab.build([["a", "a", "b"]], min_count=2).itos[4:] == ["a"]


def tiny_model(**kw) -> Translator:
    torch.manual_seed(0)
    itos = [*SPECIALS, *(f"w{i}" for i in range(20))]
    return Translator(src_vocab_size=24, tgt_itos=itos, emb_size=8, hidden_size=8, num_layers=2, **kw).eval()


@pytest.mark.parametrize("attention", [False, True])
def test_padding_is_masked_and_mixed_source_lengths_match_alone(attention):
    m = tiny_model(attention=attention)
    pairs = [Pair([4, 5, 6, 7], [8, 9, 10], "", ""), Pair([11, 12], [13], "", "")]
    both = collate(pairs, 0, 2, 3, True)
    loss_both = m._loss(both, "valid") * both["num_tokens"]
    alone = [collate([p], 0, 2, 3, True) for p in pairs]
    loss_alone = sum(m._loss(b, "valid") * b["num_tokens"] for b in alone)
    assert loss_both.item() == pytest.approx(loss_alone.item(), rel=1e-5)
    h_both = m.encode(both["src"], both["src_lengths"])[0]
    for i, b in enumerate(alone):
        assert torch.allclose(h_both[:, i], m.encode(b["src"], b["src_lengths"])[0][:, 0], atol=1e-6)


def test_the_loss_scale_follows_the_optimizer_and_gives_the_hand_computed_gradient():
    """Plain SGD (the paper preset: lr 0.7, clip 5) trains on the NLL summed over each sentence and
    averaged over the batch; Adam on the mean per target word."""
    assert tiny_model(optimizer="adam").loss_scale == "word" and tiny_model(optimizer="sgd").loss_scale == "sentence"
    pairs = [Pair([4, 5, 6], [8, 9, 10, 11], "", ""), Pair([7, 5, 4], [12], "", "")]
    batch = collate(pairs, 0, 2, 3, True)  # 2 sentences, 4 + 1 and 1 + 1 target words with <eos>: 7
    for optimizer, per in (("sgd", 2), ("adam", 7)):
        m = tiny_model(optimizer=optimizer)  # dropout 0: the two computations see the same network
        m.zero_grad()
        m._loss(batch, "train").backward()
        got = [p.grad.clone() for p in m.parameters()]
        # By hand: every target word's -log p, padding left out, summed and divided by `per`.
        m.zero_grad()
        logp = torch.log_softmax(m(batch["src"], batch["src_lengths"], batch["tgt_in"]), -1)
        words = [(t, b) for b, p in enumerate(pairs) for t in range(len(p.tgt) + 1)]
        (-sum(logp[t, b, batch["tgt_out"][t, b]] for t, b in words) / per).backward()
        for g, p in zip(got, m.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_a_training_step_logs_the_loss_its_mean_per_word_and_their_ratio(monkeypatch):
    """train_loss is what the optimizer sees; train_nll the mean per target word; loss_scale their
    ratio: 7 words over 2 sentences under the paper's SGD, 1 under Adam (scripts/dry_run_paper.py)."""
    pairs = [Pair([4, 5, 6], [8, 9, 10, 11], "", ""), Pair([7, 5, 4], [12], "", "")]
    batch = collate(pairs, 0, 2, 3, True)
    for optimizer, scale in (("sgd", 3.5), ("adam", 1.0)):
        m, logged = tiny_model(optimizer=optimizer), {}
        monkeypatch.setattr(m, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
        loss = m.training_step(batch, 0)
        assert logged["train_loss"] == pytest.approx(float(loss))
        assert logged["loss_scale"] == pytest.approx(scale)
        logits = m(batch["src"], batch["src_lengths"], batch["tgt_in"])
        per_word = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=0)
        assert logged["train_nll"] == pytest.approx(float(per_word), rel=1e-5)


def test_the_paper_schedule_halves_the_rate_every_half_epoch_after_five():
    # Sutskever et al.: 5 epochs at 0.7, then halved every half epoch (7.5 epochs in all).
    lr = [0.7 * decay_factor(e, 2.0, 5, 0.5) for e in (0, 4.99, 5.0, 5.49, 5.5, 6.0, 7.49)]
    assert lr == pytest.approx([0.7, 0.7, 0.35, 0.35, 0.175, 0.0875, 0.7 / 2 ** 5])
    # Every 1 epoch: the epoch-level schedule the other tasks use (epoch e at decay^-max(0, e + 1 - after)).
    assert [decay_factor(e + 0.5, 2.0, 4, 1.0) for e in range(7)] == [2.0 ** -max(0, e + 1 - 4) for e in range(7)]
    with pytest.raises(ValueError, match="loss_scale"):
        tiny_model(loss_scale="token")


@pytest.mark.parametrize("attention", [False, True])
def test_beam_one_translation_is_greedy(attention):
    m = tiny_model(max_len_b=6, attention=attention)
    src, lengths = torch.randint(4, 24, (5, 3)), torch.full((3,), 5)
    limit = torch.full((3,), 13)  # what translate() allows: 1.5 x 5 source words + 6
    beam = decoding.beam_search(m.step, m.encode(src, lengths), m.vocab.bos, m.vocab.eos, limit, beam=1)
    assert m.translate(src, lengths, beam=1) == [m.detok.detokenize(m.vocab.decode(s)) for s in beam]


@pytest.mark.parametrize("regularization", [None, {"zoneout_c": 0.5, "zoneout_h": 0.5}, {"weight_drop": 0.5, "embedding": 0.3}])
def test_translating_uses_the_evaluation_network_whatever_mode_the_model_is_in(regularization):
    """Left in training mode (a notebook, a callback mid-training), translate() still decodes with no
    dropout, zoneout's expectation and weight-drop's full weights, then leaves the mode as it was."""
    m = tiny_model(dropout=0.5, regularization=regularization)
    src, lengths = torch.randint(4, 24, (5, 3)), torch.full((3,), 5)
    evaluated = m.translate(src, lengths, beam=2)
    m.train()
    assert [m.translate(src, lengths, beam=2) for _ in range(3)] == [evaluated] * 3
    assert all(sub.training for sub in m.modules())
    assert not torch.equal(m.encode(src, lengths)[0], m.encode(src, lengths)[0])  # training again: fresh masks


def test_attention_decoding_step_by_step_equals_teacher_forcing_and_ignores_padding():
    """The beam search's one-step path gives the training path's distributions, and what sits in a
    padded source position (mixed lengths in one batch) changes nothing."""
    m = tiny_model(attention=True)
    pairs = [Pair([4, 5, 6, 7], [8, 9, 10], "", ""), Pair([11, 12], [13, 14, 15], "", "")]
    batch = collate(pairs, 0, 2, 3, True)
    logp = torch.log_softmax(m(batch["src"], batch["src_lengths"], batch["tgt_in"]), -1)
    state = m.encode(batch["src"], batch["src_lengths"])
    assert len(state) == 5 and state[4].tolist() == [[True, True]] * 2 + [[True, False]] * 2
    for t in range(batch["tgt_in"].size(0)):
        step_logp, state = m.step(batch["tgt_in"][t], state)
        keep = torch.ones(logp.size(-1), dtype=torch.bool)
        keep[[m.vocab.pad, m.vocab.bos]] = False  # never generated: -inf in the step's output
        torch.testing.assert_close(step_logp[:, keep], logp[t][:, keep], rtol=1e-5, atol=1e-6)
    other = batch["src"].clone()
    other[2:, 1] = 9  # sentence 1 has 2 words: rows 2-3 are padding
    changed = m(other, batch["src_lengths"], batch["tgt_in"])
    torch.testing.assert_close(changed, m(batch["src"], batch["src_lengths"], batch["tgt_in"]))
    # Without attention the parameters (and so the checkpoints) are the paper model's, unchanged.
    assert not any(k.startswith("attention") for k in tiny_model().state_dict())


def test_an_ensemble_of_one_attending_model_twice_is_the_model():
    from tasks.text_generation import ensemble_step
    m = tiny_model(attention=True)
    src, lengths = torch.randint(4, 24, (5, 3)), torch.full((3,), 5)
    state = m.encode(src, lengths)
    tokens = torch.full((3,), m.vocab.bos)
    alone, _ = m.step(tokens, state)
    both, new_state = ensemble_step([m.step, m.step], [len(state), len(state)])(tokens, (*state, *state))
    torch.testing.assert_close(both, alone)
    assert len(new_state) == 10


def test_group_by_source_collects_every_reference():
    rows = [("Get lost!", "Dégage !", "h1"), ("Hi.", "Salut.", "h2"), ("Get lost!", "Va au diable !", "h1")]
    rows = [Decoded(src, [ref], (hyp,)) for src, ref, hyp in rows]
    assert group_by_source(rows) == [Decoded("Get lost!", ["Dégage !", "Va au diable !"], ("h1",)),
                                     Decoded("Hi.", ["Salut."], ("h2",))]


def tiny_translation_preset(data_root, **data):
    preset = load_preset("translation", "tatoeba-quick")
    preset.model.update({"emb_size": 16, "hidden_size": 16, "beam": 3, "valid_decode": True})
    preset.data.update({"train": {"tab": "tab.txt"}, "split": {"valid": 0.15, "test": 0.15, "salt": "t"},
                        "test_sets": {"news": {"src": "news.en", "ref": "news.fr"}}, "src_vocab": 50,
                        "tgt_vocab": 50, "train_pairs": None, "batch_size": 16, **data})
    preset.trainer.update({"max_epochs": 2, "enable_model_summary": False, "enable_progress_bar": False})
    return preset


def test_an_unk_in_the_output_counts_as_one_wrong_word():
    """sacrebleu's 13a tokenizer alone reads "<unk>" as three words ("<", "unk", ">")."""
    from sacrebleu.metrics import BLEU

    hyp, ref = "a man <unk> a dog on the grass", "a man with a dog on the grass"
    assert BLEU().corpus_score([hyp], [[ref]]).sys_len == 10
    score, _ = text_metrics.bleu([hyp], [[ref]])
    assert (score.sys_len, score.counts[:2]) == (8, [7, 5])  # one word, matching nothing
    assert text_metrics.unk_as_one_word("Nous sommes <unk>.") == "Nous sommes \u2047."


def test_tokenized_bleu_is_multi_bleu_on_moses_tokens():
    """The paper's figures are BLEU on tokenized text: the same statistic on the Moses tokens
    (written out here by hand: elisions and punctuation split off, hyphenated words kept),
    without smoothing. It differs from sacrebleu's BLEU of the same output."""
    from sacrebleu.metrics import BLEU

    hyps = ["Il est allé à l'école avec <unk>.", "C'est un arc-en-ciel, dit-il."]
    refs = [["Il est allé à l'école avec Marie."], ["C'est un arc-en-ciel, dit-il !"]]
    by_hand = ["Il est allé à l' école avec \u2047 .", "C' est un arc-en-ciel , dit-il ."]
    ref_tokens = [["Il est allé à l' école avec Marie .", "C' est un arc-en-ciel , dit-il !"]]
    expected = BLEU(tokenize="none", smooth_method="none").corpus_score(by_hand, ref_tokens).score
    assert text_metrics.tokenized_bleu(hyps, refs, "fr") == pytest.approx(expected)
    assert 50 < expected < 80 and expected != pytest.approx(text_metrics.bleu(hyps, refs)[0].score)


@pytest.mark.parametrize("words", ["l' X est là .", "Il s' X .", "Il coûte € X .", "Il coûte $ X .", "( X ) ,",
                                   "€ ( X )", "« X » ?", "X , dit-il : X !"])
def test_an_unk_is_detokenized_where_a_word_would_be(words):
    """Moses joins an elision only to a word starting with a letter: "l' <unk>" stayed apart where
    "l' homme" gives "l'homme". Currency signs, brackets and French punctuation stay as for a word."""
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang="fr")
    as_word = detok.detokenize(words.replace("X", "homme").split())
    assert detokenize(detok, words.replace("X", "<unk>").split()) == as_word.replace("homme", "<unk>")
    assert detokenize(detok, "l' Qunkq <unk>".split()) == "l'Qunkq <unk>"  # the stand-in itself is left alone


def test_tokenized_bleu_splits_an_elided_unk_as_a_word():
    """"l'<unk>" is tokenized as "l'homme" is, "l'" and one wrong word: not "l", "'", "<unk>",
    which lost the elision's match and added a word."""
    refs = [["Je vois l'homme et l'arbre."]]
    wrong_word = text_metrics.tokenized_bleu(["Je vois l'femme et l'arbre."], refs, "fr")
    assert text_metrics.tokenized_bleu(["Je vois l'<unk> et l'arbre."], refs, "fr") == pytest.approx(wrong_word)
    assert text_metrics.bleu(["Je vois l'<unk> et l'arbre."], refs)[0].sys_len == 6  # 13a: "l'<unk>" one word


def test_end_to_end_run_writes_bleu_ppl_and_samples(tmp_path):
    write_tab(tmp_path / "tab.txt")
    (tmp_path / "news.en").write_text("\n".join(EN) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR) + "\n")
    opts = RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                      command="test")
    row = run(tiny_translation_preset(tmp_path), opts)
    for key in ("test_ppl", "test_bleu", "test_bleu_greedy", "test_chrf", "test_news_bleu", "test_news_ppl",
                "test_bleu_tok", "test_news_bleu_tok", "valid_ppl", "valid_bleu_greedy", "train_ppl"):
        assert key in row, key
    assert 1 < float(row["test_ppl"]) < 50 and 0 <= float(row["test_bleu"]) <= 100
    assert int(row["tokens_per_s"]) > 0
    run_dir = find_run(tmp_path / "runs", "translation-tatoeba-quick-dropout_on-seed0")
    # Both BLEUs of the row are the outputs file's hypotheses and references scored again.
    lines = [json.loads(line) for line in (run_dir / "outputs" / "test_news.jsonl").read_text().splitlines()]
    hyps, refs = [x["hyp"] for x in lines], [x["refs"] for x in lines]
    assert float(row["test_news_bleu"]) == pytest.approx(text_metrics.bleu(hyps, refs)[0].score, abs=1e-4)
    assert float(row["test_news_bleu_tok"]) == pytest.approx(text_metrics.tokenized_bleu(hyps, refs, "fr"), abs=1e-4)
    samples = (run_dir / "samples" / "test_news.txt").read_text()
    assert "source: He runs ." in samples and "beam 3:" in samples and "greedy:" in samples
    assert (run_dir / "samples" / "valid-epoch001.txt").is_file()
    with open(tmp_path / "results" / "runs.csv") as f:
        assert next(csv.DictReader(f))["task"] == "translation"


def test_a_run_steps_the_half_epoch_schedule_by_its_own_batches(tmp_path):
    write_tab(tmp_path / "tab.txt", n=200)
    (tmp_path / "news.en").write_text("\n".join(EN) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR) + "\n")
    preset = tiny_translation_preset(tmp_path)
    preset.model.update({"optimizer": "sgd", "lr": 0.7, "lr_decay": 2.0, "decay_after": 1, "decay_every": 0.5,
                         "beam": 1, "valid_decode": False})
    row = run(preset, RunOptions(data_root=tmp_path, results_dir=tmp_path / "r", runs_dir=tmp_path / "runs",
                                 command="test"))
    ckpt = torch.load(find_run(tmp_path / "runs", "translation-tatoeba-quick-dropout_on-seed0") / "checkpoints" / "last.ckpt",
                      weights_only=True)
    # 2 epochs: 1 at 0.7, then halved at 1, 1.5 and (after the last step) 2 epochs
    assert ckpt["lr_schedulers"][0]["last_epoch"] == int(row["steps"]) > 2
    # beam: 1 decodes greedily only: that decoding is the headline too, or the leaderboard finds none.
    for metric in ("bleu", "bleu_tok", "chrf", "news_bleu"):
        assert row[f"test_{metric}"] == row[f"test_{metric}_greedy"] != "", metric
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.7 / 8)
    # Stopped by a step count (--max-steps, a dry run) the schedule still counts epochs in batches.
    preset.trainer["max_steps"] = int(row["steps"]) // 2
    row = run(preset, RunOptions(data_root=tmp_path, results_dir=tmp_path / "r2", runs_dir=tmp_path / "runs2",
                                 command="test"))
    ckpt = torch.load(find_run(tmp_path / "runs2", "translation-tatoeba-quick-dropout_on-seed0") / "checkpoints" / "last.ckpt",
                      weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.7 / 2)  # 1 epoch: halved once


@pytest.fixture
def tatoeba_root():
    need_real_data(REAL_DATA_ROOT / "tatoeba-fra-eng" / "fra.txt")
    return REAL_DATA_ROOT


def test_real_tatoeba_slice_trains_and_scores(tatoeba_root, tmp_path):
    preset = load_preset("translation", "tatoeba-quick")
    preset.data["test_sets"] = {"newstest2013": {"src": "wmt/dev/newstest2013.en", "ref": "wmt/dev/newstest2013.fr"}}
    dm = ParallelTextDataModule(data_root=tatoeba_root, **{**preset.data, "train_pairs": 3000})
    dm.setup("fit")
    # The configured split of the 167,130 pairs is fixed: these counts are a property of the file.
    assert {k: len(v) for k, v in dm.sets.items() if k != "train"} == {"valid": 1678, "test": 3342,
                                                                          "test_newstest2013": 3000}
    assert len(dm.sets["train"]) <= 3000 and len(dm.src_vocab) <= 6000
    batch = next(iter(dm.val_dataloader()))
    assert batch["src"].size(0) == int(batch["src_lengths"][0]) and (batch["src_lengths"] == batch["src_lengths"][0]).all()
    preset.data.update({"train_pairs": 3000})
    preset.model.update({"emb_size": 32, "hidden_size": 32})
    preset.trainer.update({"max_epochs": 1, "limit_val_batches": 2, "limit_test_batches": 2,
                           "enable_model_summary": False, "enable_progress_bar": False})
    row = run(preset, RunOptions(dropout="on", data_root=tatoeba_root, results_dir=tmp_path / "r",
                                 runs_dir=tmp_path / "runs", command="test"))
    assert float(row["test_ppl"]) < 3000 and float(row["test_newstest2013_ppl"]) > float(row["test_ppl"])


def test_named_sacrebleu_test_set_reads_sacrebleus_files(tmp_path, monkeypatch):
    import sacrebleu.utils as sbu

    (tmp_path / "src.en").write_text("Hello.\n")
    (tmp_path / "ref.fr").write_text("Bonjour.\n")
    calls = []

    def source(test_set, langpair):
        calls.append((test_set, langpair))
        return str(tmp_path / "src.en")

    monkeypatch.setattr(sbu, "get_source_file", source)
    monkeypatch.setattr(sbu, "get_reference_files", lambda t, lp: [str(tmp_path / "ref.fr")])
    assert read_corpus({"sacrebleu": "wmt14/full"}, tmp_path, "en-fr")[0] == [("Hello.", "Bonjour.")]
    assert calls == [("wmt14/full", "en-fr")]

    def offline(test_set, langpair):
        raise SystemExit("Download failed")  # what sacrebleu does without network

    monkeypatch.setattr(sbu, "get_source_file", offline)
    with pytest.raises(DataError, match=r"sacrebleu test set 'wmt14/full' \(en-fr\) unavailable.*by path instead"):
        read_corpus({"sacrebleu": "wmt14/full"}, tmp_path, "en-fr")


def test_lowercased_words_are_scored_against_lowercased_references(tmp_path):
    """BLEU is case-sensitive: with `lowercase: true` the model can only write lower case, so the
    references it is scored against are lower-cased too."""
    write_tab(tmp_path / "tab.txt")
    (tmp_path / "news.en").write_text("\n".join(EN) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR) + "\n")
    for lowercase in (False, True):
        preset = tiny_translation_preset(tmp_path, lowercase=lowercase)
        dm = ParallelTextDataModule(tmp_path, **preset.data)
        dm.setup()
        refs = [p.ref_text for p in dm.sets["test_news"]]
        assert ("Je suis ici ." in refs) != lowercase and ("je suis ici ." in refs) == lowercase


def test_a_source_line_of_control_characters_alone_is_left_out(tmp_path, caplog):
    """Moses deletes ASCII control characters, so "\x1a" (a stray Ctrl-Z) is not an empty line but
    becomes a sentence of no words: an encoder input of length 0, which the LSTM refuses."""
    write_tab(tmp_path / "tab.txt")
    with open(tmp_path / "tab.txt", "a") as f:
        f.write("\x1a\tJe suis ici .\n")
    (tmp_path / "news.en").write_text("\n".join([*EN, "\x01\x02"]) + "\n")
    (tmp_path / "news.fr").write_text("\n".join([*FR, "Rien ."]) + "\n")
    dm = ParallelTextDataModule(tmp_path, **tiny_translation_preset(tmp_path).data)
    dm.setup()
    assert all(p.src for pairs in dm.sets.values() for p in pairs)
    assert len(dm.sets["test_news"]) == len(EN)
    assert "test_news: left out 1 pair(s) whose source has no word once tokenized" in caplog.text


def test_validation_decodes_every_nth_epoch_and_the_last(tmp_path):
    """`valid_decode: 2` over 3 epochs: perplexity every epoch, greedy BLEU at epochs 2 and 3."""
    write_tab(tmp_path / "tab.txt")
    (tmp_path / "news.en").write_text("\n".join(EN) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR) + "\n")
    preset = tiny_translation_preset(tmp_path)
    preset.model["valid_decode"] = 2
    preset.trainer["max_epochs"] = 3
    run(preset, RunOptions(data_root=tmp_path, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs"))
    run_dir = find_run(tmp_path / "runs", "translation-tatoeba-quick-dropout_on-seed0")
    with open(run_dir / "csv" / "metrics.csv") as f:
        epochs = [r for r in csv.DictReader(f) if r.get("valid_ppl")]
    assert len(epochs) == 3 and [bool(r["valid_bleu_greedy"]) for r in epochs] == [False, True, True]
    assert sorted(p.name for p in (run_dir / "samples").glob("valid-*")) == ["valid-epoch001.txt", "valid-epoch002.txt"]


def test_multi30k_fetch_gunzips_each_file_and_checks_its_sha256(tmp_path):
    """The publisher's raw/ layout (one .gz per file) served from file://: every file lands
    uncompressed with the listed sum; a wrong sum or a broken .gz writes nothing."""
    import dataclasses
    import gzip
    import hashlib

    from datamodules import download as fetch
    from datamodules.sources import MULTI30K

    texts = {"val.en": b"A dog runs.\n", "val.fr": "Un chien court.\n".encode()}
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, data in texts.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(data))
    ds = dataclasses.replace(MULTI30K, url=raw.as_uri(), sha256={n: hashlib.sha256(d).hexdigest() for n, d in texts.items()},
                             gz_files={n: (raw / f"{n}.gz").as_uri() for n in texts})
    bad = dataclasses.replace(ds, sha256={**ds.sha256, "val.fr": "0" * 64})
    with pytest.raises(DataError, match="publisher now serves other contents \\(val.fr has sha256"):
        fetch.download(bad, tmp_path / "root")
    assert not any((tmp_path / "root" / "multi30k").glob("val.*"))
    (raw / "val.fr.gz").write_bytes(gzip.compress(texts["val.fr"])[:-6])  # truncated
    with pytest.raises(DataError, match="not a complete gzip file"):
        fetch.download(ds, tmp_path / "root")
    damaged = bytearray(gzip.compress(texts["val.fr"]))
    damaged[10] = 0xFF  # the deflate stream's first byte: a reserved block type, a zlib.error, not an OSError
    (raw / "val.fr.gz").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"val\.fr\.gz is not a complete gzip file \(Error -3"):
        fetch.download(ds, tmp_path / "root")
    assert not any((tmp_path / "root" / "multi30k").glob("val.*"))
    (raw / "val.fr.gz").write_bytes(gzip.compress(texts["val.fr"]))
    folder = fetch.download(ds, tmp_path / "root")
    assert {n: (folder / n).read_bytes() for n in texts} == texts
    # The real files' names and the sums of the copy in the shared data folder.
    assert set(MULTI30K.gz_files) == set(MULTI30K.sha256) >= {"train.en", "train.fr", "test_2016_flickr.fr"}
    if (REAL_DATA_ROOT / "multi30k" / "val.fr").is_file():
        assert fetch.sha256_of(REAL_DATA_ROOT / "multi30k" / "val.fr") == MULTI30K.sha256["val.fr"]


def test_dropout_after_attention_leaves_the_scores_inputs_whole():
    """`attention_dropout_at: output` drops the attention's output on its way to the softmax instead of
    the memory and the decoder's outputs it scores; the parameters and the evaluation network are
    the default model's."""
    inputs, output = tiny_model(attention=True, dropout=0.5), tiny_model(attention=True, dropout=0.5,
                                                                         attention_dropout_at="output")
    assert inputs.state_dict().keys() == output.state_dict().keys()
    output.load_state_dict(inputs.state_dict())
    src, lengths, tgt = torch.randint(4, 24, (5, 3)), torch.full((3,), 5), torch.randint(4, 24, (4, 3))
    torch.testing.assert_close(output(src, lengths, tgt), inputs(src, lengths, tgt))
    output.train()
    memory = output.encode(src, lengths)[3]
    assert (output.attention.keys(memory) != 0).all()
    seen = {}
    output.attention.register_forward_hook(lambda mod, args, out: seen.update(y=args[0], memory=args[2], out=out))
    output.head.register_forward_hook(lambda mod, args, out: seen.update(head_in=args[0]))
    output(src, lengths, tgt)
    assert (seen["y"] != 0).all() and (seen["memory"] != 0).all()
    dropped = seen["head_in"] == 0
    assert dropped.any() and (seen["out"][dropped] != 0).all()  # zeros come from the mask, not tanh
    torch.testing.assert_close(seen["head_in"][~dropped], 2 * seen["out"][~dropped])
    with pytest.raises(ValueError, match="needs attention: true"):
        tiny_model(attention_dropout_at="output")
    with pytest.raises(ValueError, match="'inputs' or 'output'"):
        tiny_model(attention=True, attention_dropout_at="after")


def test_a_gzipped_corpus_and_a_string_threshold_are_one_line_each(tmp_path):
    import gzip

    from datamodules.bad_records import BadRecordPolicy
    from datamodules.parallel import read_text

    (tmp_path / "train.en.gz").write_bytes(gzip.compress(b"a dog runs\n"))
    with pytest.raises(DataError, match=r"train\.en\.gz: gzip-compressed; gunzip it"):
        read_text(tmp_path / "train.en.gz")
    with pytest.raises(DataError, match=r"skip_above must be a whole number \(write 100000, not 1e5\)"):
        BadRecordPolicy.of({"skip_above": "1e5"})  # what PyYAML makes of `skip_above: 1e5`
    with pytest.raises(DataError, match="max_fraction must be a number"):
        BadRecordPolicy.of({"max_fraction": "0.01"})
