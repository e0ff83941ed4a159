"""What each regularizer means (tasks/nn/regularizers.py), checked through the backbone's own forward:
where its mask sits, how long it lives, what evaluation does, and that none of them touches the
parameters, so a checkpoint moves between them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmark import config
from benchmark.cli import build_parser, plan_runs
from benchmark.leaderboard import build
from benchmark.results import append_row, read_rows
from tasks.captioner import Captioner
from tasks.frame_classifier import FrameClassifier
from tasks.language_model import LanguageModel
from tasks.nn.backbone import DropoutLSTM, init_uniform_
from tasks.nn.errors import ConfigError
from tasks.nn.mechanisms import FLAGS, MECHANISMS
from tasks.nn.regularizers import Regularization, WordEmbedding, locked_dropout, lstm_steps
from tasks.text_generation import TextGenerator

T, B, I, H, L = 9, 3, 5, 8, 2
EVERY = {"locked": {"locked": 0.5}, "variational": {"locked": 0.5, "hidden": 0.4},
         "untied": {"locked": 0.5, "hidden": 0.4, "per_gate": True}, "weight_drop": {"weight_drop": 0.5},
         "embedding": {"embedding": 0.3}, "zoneout": {"zoneout_c": 0.5, "zoneout_h": 0.2},
         "recurrent": {"recurrent": 0.3}}


def backbone(reg: dict | None, impl: str = "stacked", dropout: float = 0.0, layers: int = L) -> DropoutLSTM:
    torch.manual_seed(0)
    m = DropoutLSTM(I, H, layers, dropout, impl=impl, regularization=reg)
    init_uniform_(m, 0.3)
    return m


def plain_twin(m: DropoutLSTM) -> DropoutLSTM:
    """The same weights with no regularization: the plain LSTM the regularized one must equal at eval."""
    twin = DropoutLSTM(I, H, m.num_layers, 0.0, impl=m.impl)
    twin.load_state_dict(m.state_dict())
    return twin


def zero_columns(grad: torch.Tensor) -> set[int]:
    return {j for j in range(grad.size(1)) if torch.all(grad[:, j] == 0)}


@pytest.mark.parametrize("impl", ["stacked", "fused"])
def test_the_step_loop_with_nothing_dropped_is_nn_lstm(impl):
    """`per_gate` with zero rates forces the step loop and masks nothing: it must be the LSTM kernel's
    math, padded and packed (each sequence's final state at its own length)."""
    m, ref = backbone({"per_gate": True}, impl), None
    ref = plain_twin(m)
    x, state = torch.randn(T, B, I), (torch.randn(L, B, H), torch.randn(L, B, H))
    packed = pack_padded_sequence(x, torch.tensor([9, 4, 6]), enforce_sorted=False)
    for inp in (x, packed):
        (y, (h, c)), (y_ref, (h_ref, c_ref)) = m.train()(inp, state), ref(inp, state)
        if inp is packed:
            y, y_ref = pad_packed_sequence(y)[0], pad_packed_sequence(y_ref)[0]
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close((h, c), (h_ref, c_ref))


def test_the_tied_step_loop_is_nn_lstm_too():
    """lstm_steps itself, on the path hidden/zoneout/recurrent take (one mask for all gates)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    y, (h, c) = lstm_steps(x, (h0, c0), tuple(lstm._flat_weights), Regularization(), training=True)
    y_ref, (h_ref, c_ref) = lstm(x, (h0[None], c0[None]))
    torch.testing.assert_close((y, h, c), (y_ref, h_ref[0], c_ref[0]))


@pytest.mark.parametrize("impl", ["stacked", "fused"])
@pytest.mark.parametrize("name", ["locked", "variational"])
def test_locked_masks_hold_over_time_and_are_fresh_per_sequence_and_call(name, impl):
    """One sequence (B=1): a unit dropped by a per-sequence mask is dropped at every step, so its
    column of the next layer's W_ih gets no gradient at all (a per-step mask, the paper's, leaves
    none such); the same holds between layers, and the output's dropped units read 0 at every step."""
    m = backbone(EVERY[name], impl).train()
    x = torch.randn(T, 1, I)
    dropped_sets = []
    for _ in range(3):
        m.zero_grad()
        y, _ = m(x)
        y.sum().backward()
        dropped_sets.append(zero_columns(m._weights(0)[0].grad))
        assert zero_columns(m._weights(1)[0].grad)  # between layers too
        assert torch.any(torch.all(y[:, 0] == 0, dim=0))  # the output: some unit 0 at every step
    assert all(dropped_sets) and all(len(d) < I for d in dropped_sets)
    assert len({frozenset(d) for d in dropped_sets}) > 1  # a fresh mask every call
    paper = backbone(None, dropout=0.5).train()
    paper(x)[0].sum().backward()
    assert not zero_columns(paper.layers[0].weight_ih_l0.grad)
    # Within one call, sequences draw their own masks.
    out = locked_dropout(torch.ones(T, 64, H), 0.5)
    assert torch.equal(out, out[:1].expand_as(out)) and not torch.equal(out[:, 0], out[:, 1])
    assert set(out.unique().tolist()) == {0.0, 2.0}


def test_the_fused_layouts_layer_shells_draw_nothing_from_the_rng():
    """Locked dropout on the fused layout runs each layer through a one-layer nn.LSTM built at the
    first training batch. The first batch (which builds them) and a later one (which reuses them)
    leave the RNG alike, so a run resumed in a later epoch draws the uninterrupted run's masks."""
    lstm = DropoutLSTM(8, 8, 2, impl="fused", regularization={"locked": 0.3}).train()
    x = torch.randn(5, 3, 8)
    torch.manual_seed(0)
    built, after_build = lstm(x)[0], torch.rand(4)
    assert sorted(lstm.__dict__["_shells"]) == [0, 1]
    torch.manual_seed(0)
    reused, after_reuse = lstm(x)[0], torch.rand(4)
    assert torch.equal(built, reused) and torch.equal(after_build, after_reuse)


def test_variational_recurrent_mask_holds_over_time():
    """Gal & Ghahramani's h mask: a unit of h_{t-1} dropped for a sequence never reaches W_hh."""
    m = backbone({"hidden": 0.5}, layers=1).train()
    m(torch.randn(T, 1, I))[0].sum().backward()
    dropped = zero_columns(m.layers[0].weight_hh_l0.grad)
    assert dropped and len(dropped) < H


def test_untied_masks_differ_per_gate():
    """per_gate: each gate's block of W_ih and of W_hh sees its own mask, so the dropped columns
    (inputs and hidden units) differ from gate to gate, and hold over the whole sequence."""
    torch.manual_seed(0)
    width = 24  # wide enough that every gate's mask drops some unit
    m = DropoutLSTM(width, width, 1, 0.0, regularization={"locked": 0.5, "hidden": 0.5, "per_gate": True}).train()
    m(torch.randn(T, 1, width))[0].sum().backward()
    for w in (m.layers[0].weight_ih_l0, m.layers[0].weight_hh_l0):
        per_gate = [frozenset(zero_columns(b)) for b in w.grad.view(4, width, width)]
        assert all(per_gate) and len(set(per_gate)) == 4


@pytest.mark.parametrize("impl", ["stacked", "fused"])
def test_weight_drop_masks_w_hh_once_per_call_never_at_eval_and_leaves_it_untouched(impl):
    m = backbone({"weight_drop": 0.5}, impl)
    before = [m._weights(i)[1].detach().clone() for i in range(L)]
    m.train()(torch.randn(T, 1, I))[0].sum().backward()
    for i in range(L):  # every layer (the fused layout swaps all of them in one kernel call)
        w = m._weights(i)[1]
        assert torch.equal(w, before[i])  # the stored weights unchanged
        zeros = (w.grad == 0).float().mean().item()
        assert 0.3 < zeros < 0.7  # ~half the entries dropped, one mask for every step of the call
        assert (m._weights(i)[0].grad == 0).float().mean().item() < 0.1  # W_ih is not dropped
    assert set(m.state_dict()) == set(plain_twin(m).state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(m.eval()(x)[0], plain_twin(m).eval()(x)[0], rtol=0, atol=0)
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])  # a fresh DropConnect mask per call


def test_embedding_dropout_drops_whole_word_types_and_rescales():
    torch.manual_seed(0)
    emb = WordEmbedding(6, 4, drop_types=0.5)
    ids = torch.tensor([[1, 2, 1, 3, 1, 2, 5, 5]] * 3)  # (T, B) with repeats
    out = emb.train()(ids)
    for word in ids.unique():
        rows = out[ids == word]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # every occurrence alike: dropped or kept
        assert torch.equal(rows[0], torch.zeros(4)) or torch.allclose(rows[0], emb.weight[word] * 2)
    mean = torch.stack([emb(ids) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, emb.weight[ids], atol=0.05, rtol=0.1)  # unbiased
    assert torch.equal(emb.eval()(ids), emb.weight[ids])


def test_zoneout_keeps_or_updates_each_unit_and_uses_its_expectation_at_eval():
    """Krueger et al.: each unit of c_t and of h_t keeps its previous value with its own probability
    (z_c, z_h) or takes the LSTM's new value; evaluation moves by the expectation."""
    zc, zh = 0.7, 0.2
    cell = nn.LSTMCell(I, H)
    weights = tuple(getattr(cell, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    reg = Regularization(zoneout_c=zc, zoneout_h=zh)
    torch.manual_seed(1)
    x, h0, c0 = torch.randn(1, 400, I), torch.randn(400, H), torch.randn(400, H)
    with torch.no_grad():
        fresh_h, fresh_c = cell(x[0], (h0, c0))
        _, (h, c) = lstm_steps(x, (h0, c0), weights, reg, training=True)
        for new, old, fresh, z in ((h, h0, fresh_h, zh), (c, c0, fresh_c, zc)):
            kept, moved = torch.isclose(new, old, atol=1e-6), torch.isclose(new, fresh, atol=1e-6)
            assert torch.all(kept | moved)
            assert abs(kept.float().mean().item() - z) < 0.02  # the unit keeps its value with probability z
        m = backbone({"zoneout_c": zc, "zoneout_h": zh}, layers=1)
        cell.load_state_dict({k.removesuffix("_l0"): v for k, v in m.layers[0].state_dict().items()})
        x = torch.randn(T, B, I)
        y_eval, _ = m.eval()(x)
        h = c = torch.zeros(B, H)
        for t in range(T):
            h_new, c_new = cell(x[t], (h, c))
            h, c = zh * h + (1 - zh) * h_new, zc * c + (1 - zc) * c_new
            torch.testing.assert_close(y_eval[t], h)


def test_recurrent_dropout_drops_the_cell_update_in_training_only():
    """Semeniuta et al.: c_t = f c_{t-1} + i d(g_t). From c_0 = 0 the first step's c is i d(g): zero
    where g was dropped, i g / (1 - p) where kept."""
    p = 0.5
    cell = nn.LSTMCell(I, H)
    weights = tuple(getattr(cell, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    x, zero = torch.randn(1, 300, I), torch.zeros(300, H)
    with torch.no_grad():
        _, (_, c) = lstm_steps(x, (zero, zero), weights, Regularization(recurrent=p), training=True)
        _, c_plain = cell(x[0], (zero, zero))  # = i g
    dropped = c == 0
    assert abs(dropped.float().mean().item() - p) < 0.03
    torch.testing.assert_close(c[~dropped], c_plain[~dropped] / (1 - p))
    m = backbone({"recurrent": 0.5})
    x = torch.randn(T, B, I)
    torch.testing.assert_close(m.eval()(x)[0], plain_twin(m).eval()(x)[0], rtol=0, atol=0)
    assert not torch.allclose(m.train()(x)[0], plain_twin(m).train()(x)[0])


@pytest.mark.parametrize("name", sorted(EVERY))
def test_gradients_reach_every_parameter_and_checkpoints_move_between_regularizers(name):
    torch.manual_seed(0)
    lm = LanguageModel(50, hidden_size=12, num_layers=2, dropout=0.0, regularization=EVERY[name]).train()
    x = torch.randint(0, 50, (T, B))
    logits, _ = lm(x)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.parameters())
    paper = LanguageModel(50, hidden_size=12, num_layers=2, dropout=0.5)
    paper.load_state_dict(lm.state_dict())  # strict: the same parameters, whatever the regularizer
    lm.load_state_dict(paper.state_dict())
    if name != "zoneout":  # zoneout's evaluation is its expectation, not the plain LSTM
        torch.testing.assert_close(lm.eval()(x)[0], paper.eval()(x)[0])


def test_every_task_takes_the_regularizers_and_speech_refuses_word_dropout():
    cap = Captioner(itos=["<pad>", "<unk>", "<bos>", "<eos>", "a"], feat_dim=6, emb_size=8, hidden_size=8,
                    regularization={"embedding": 0.2, "zoneout_c": 0.3})
    assert cap.emb.drop_types == 0.2 and cap.decoder.reg.zoneout_c == 0.3
    with pytest.raises(ValueError, match="embedding dropout does not apply"):
        FrameClassifier(input_size=4, num_classes=3, fold_ids=[0, 1, 2], score_names=["a", "b", "c"],
                        regularization={"embedding": 0.1})
    with pytest.raises(ValueError, match="unknown regularization mechanism"):
        Regularization.of({"dropconnect": 0.5})
    assert set(MECHANISMS) | set(FLAGS) == {"dropout", *Regularization.__dataclass_fields__}


def test_presets_name_their_regularizers_and_bad_ones_fail_clearly(tmp_path):
    ptb = config.load_preset("ptb", "quick")
    assert config.regularizer_names(ptb)[:2] == ["zaremba", "variational"]
    on = config.load_preset("ptb", "quick")
    config.apply_regularizer(on, "locked")
    assert on.model["dropout"] == 0.0 and on.model["regularization"] == {"locked": 0.5}
    assert on.hashed_model == ptb.model and config.regularizer_tag(on).startswith("locked-")
    assert config.apply_dropout(on, "off") == {"dropout": 0.0} and "regularization" not in on.model
    with pytest.raises(ConfigError, match="no rates for regularizer 'embedding'"):
        config.apply_regularizer(config.load_preset("speech", "quick"), "embedding")
    bad = tmp_path / "bad.yaml"
    bad.write_text((config.registry.get("ptb").presets_dir / "small.yaml").read_text()
                   + "regularizers:\n  mine: {dropconect: 0.5}\n")
    with pytest.raises(ConfigError, match="unknown mechanism"):
        config.load_preset("ptb", str(bad))


def test_a_sweep_of_regularizers_shares_one_off_run_per_seed():
    args = build_parser().parse_args(["run", "--task", "ptb", "--preset", "quick", "--regularizer", "all",
                                      "--dropout", "on,off", "--num-seeds", "2"])
    args.argv = []
    plan = plan_runs(args)
    arms = [(p.regularizer, d, s) for p, d, s in plan]
    names = config.regularizer_names(config.load_preset("ptb", "quick"))
    assert [a for a in arms if a[1] == "off"] == [("zaremba", "off", 0), ("zaremba", "off", 1)]
    assert {a[0] for a in arms if a[1] == "on"} == set(names) and len(arms) == 2 * len(names) + 2
    several = build_parser().parse_args(["run", "--task", "ptb,speech", "--preset", "quick", "--regularizer",
                                         "embedding", "--dropout", "on"])
    several.argv = []
    assert [(p.task, p.regularizer) for p, _, _ in plan_runs(several)] == [("ptb", "embedding")]  # speech: no words
    gal = build_parser().parse_args(["run", "--task", "ptb", "--preset", "large-variational"])
    gal.argv = []
    (preset, dropout, _), = plan_runs(gal)
    assert preset.regularizer == "variational" and preset.model["regularization"]["per_gate"] is True


def test_every_regularizer_shares_the_papers_settings_hash_and_gets_its_own_folder(data_root):
    from benchmark.runner import make_datamodule, run_name, settings_hash

    args = build_parser().parse_args(["run", "--task", "ptb", "--preset", "quick", "--regularizer", "all",
                                      "--dropout", "on,off"])
    args.argv = []
    plan = plan_runs(args)
    before = config.load_preset("ptb", "quick")  # as the preset loaded before regularizers existed
    chash = settings_hash(before, make_datamodule(before, data_root), {}, data_root)
    hashes, names = set(), set()
    for preset, dropout, seed in plan:
        hashes.add(settings_hash(preset, make_datamodule(preset, data_root), {}, data_root))
        names.add(run_name(preset, dropout, seed, chash))
    assert hashes == {chash} and len(names) == len(plan)
    assert f"ptb-quick-{chash}-dropout_on-seed0" in names and f"ptb-quick-{chash}-dropout_off-seed0" in names


def _row(reg, seed, ppl, rate):
    return {"task": "ptb", "preset": "quick", "dropout": "off" if reg == "none" else "on", "regularizer": reg,
            "dropout_rate": rate, "seed": str(seed), "overrides": "", "config_hash": "aaaa", "test_ppl": str(ppl),
            "finished_utc": f"2026-12-01T10:0{seed}:00Z", "command": "bench run"}


def test_the_leaderboard_has_a_regularizer_dimension_paired_with_the_same_off_runs(tmp_path):
    for seed, (off, paper, locked) in enumerate([(400, 360, 350), (410, 362, 349), (405, 365, 352)]):
        append_row(tmp_path, _row("none", seed, off, "dropout=0.0"))
        append_row(tmp_path, _row("zaremba", seed, paper, "dropout=0.5"))
        append_row(tmp_path, _row("locked", seed, locked, "dropout=0.0;locked=0.5"))
    append_row(tmp_path, _row("locked", 0, 900, "dropout=0.0;locked=0.9"))  # other rates: never pooled
    board = read_rows(build(tmp_path, plots=True))
    by = {(r["regularizer"], r["rates"]): r for r in board}
    assert by[("locked", "dropout=0.0;locked=0.5")]["mean"] == "350.33" and by[("zaremba", "dropout=0.5")]["seeds"] == "3"
    assert by[("locked", "dropout=0.0;locked=0.9")]["seeds"] == "1"
    effects = {(e["regularizer"], e["rates"], e["metric"]): e for e in read_rows(tmp_path / "effects.csv")}
    assert effects[("locked", "dropout=0.0;locked=0.5", "test_ppl")]["verdict"] == "locked better, beyond seed noise"
    assert effects[("locked", "dropout=0.0;locked=0.9", "test_ppl")]["verdict"] == "one seed: a smoke test, no claim"
    assert effects[("zaremba", "dropout=0.5", "test_ppl")]["pairs"] == "3"
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "| locked (dropout=0.0;locked=0.5) | 3 |" in md and "quick locked (dropout=0.0;locked=0.5) `test_ppl`" in md
    assert (tmp_path / "regularizers-ptb-quick.png").stat().st_size > 10_000


def _trains_every_parameter_and_decodes_as_it_scores(model: TextGenerator, inputs: tuple, steps: list[torch.Tensor],
                                                     twin: TextGenerator, start: Callable[[], tuple]) -> None:
    """A training pass reaches every parameter; the weights load into the paper's-dropout twin and,
    at evaluation, give its logits (not compared under zoneout, whose evaluation is its expectation:
    test_zoneout_keeps_or_updates_each_unit_and_uses_its_expectation_at_eval); decoding one word at
    a time (beam search's path) gives the teacher-forced log-probabilities."""
    model.train()
    model(*inputs).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    twin.load_state_dict(model.state_dict())  # strict: one parameter layout whatever the regularizer
    model.eval()
    twin.eval()
    with torch.no_grad():
        logits = model(*inputs)
        if not model.decoder.reg or not (model.decoder.reg.zoneout_c or model.decoder.reg.zoneout_h):
            torch.testing.assert_close(logits, twin(*inputs))
        keep = torch.ones(logits.size(-1), dtype=torch.bool)
        keep[[model.vocab.pad, model.vocab.bos]] = False  # never generated: -inf in a step's output
        state = start()
        for t, tokens in enumerate(steps):
            logp, state = model.step(tokens, state)
            torch.testing.assert_close(logp[:, keep], logits[t].log_softmax(-1)[:, keep])


@pytest.mark.parametrize("impl", ["fused", "stacked"])
@pytest.mark.parametrize("name", sorted(EVERY))
def test_translation_and_captioning_train_and_decode_under_every_regularizer(name, impl):
    """The seq2seq model (attention, packed source of mixed lengths) and the captioner under each
    regularizer: the masks reach the source embedding, attention and image projection's gradients
    through the LSTMs, and vanish at test time, where step-by-step decoding is the scored model."""
    from tests.test_captioning import tiny_captioner
    from tests.test_translation import tiny_model

    tr = tiny_model(attention=True, backbone=impl, regularization=EVERY[name])
    src, lengths, tgt = torch.randint(4, 24, (6, 3)), torch.tensor([6, 4, 5]), torch.randint(4, 24, (5, 3))
    _trains_every_parameter_and_decodes_as_it_scores(
        tr, (src, lengths, tgt), list(tgt), tiny_model(attention=True, backbone=impl, dropout=0.5),
        lambda: tr.encode(src, lengths))
    cap = tiny_captioner(backbone=impl, regularization=EVERY[name])
    feats, words = torch.randn(3, 6), torch.randint(4, 19, (5, 3))
    _trains_every_parameter_and_decodes_as_it_scores(
        cap, (feats, words, torch.arange(3)), list(words), tiny_captioner(backbone=impl, dropout=0.5),
        lambda: cap.start(feats))
