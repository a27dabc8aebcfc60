"""Beam search as transformers 4.57 does it (`GenerationMixin._beam_search`, no sampling), on the
host with numpy over the text decoder's KV cache, so that `generate(num_beams=k)` returns
transformers' sequences.

Per step, for each prompt: log-softmax of the beams' next-token logits (then the logits processors,
as transformers applies them to the log-probabilities), plus each beam's running score; the best
`max(2, 1 + n_eos) * k` continuations; those ending in eos (or at max length) become finished
hypotheses scored `sum_logprob / generated_len ** length_penalty` if they rank in the first k; the
best k unfinished ones run on (the cache is reordered to them). It stops when no running beam can
beat the worst finished one (transformers' heuristic for `early_stopping=False`; `True` stops
once k hypotheses are finished), or at max length.
"""
import numpy as np
from mindspore import Tensor, ops

from mindspeed_ms.models.qwen2vl.language import causal_padding_mask

NEG = -1.0e9


def _log_softmax(x):
    x = x.astype(np.float32)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def _top(x, k):
    """Indices of the k largest values per row, largest first (ties: lower index first)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def _gather(x, idx):
    """x [B, N, ...], idx [B, M] -> x[b, idx[b]]."""
    return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(model, ids, mask, vision, num_beams, max_new, eos_ids, pad_id, length_penalty=1.0,
                early_stopping=False, process_logits=None):
    """Best beam of each prompt: [B, S + T] int64 (T = the longest best hypothesis, shorter ones padded)."""
    bsz, s = ids.shape
    k = int(num_beams)
    decoder = model.text_decoder
    batch, rope_deltas = model.prepare_batch(ids, mask, **vision)
    t = {n: Tensor(v) for n, v in batch.items()}
    embeds = model.merge_vision(t["input_ids"], t["pixel_values"], t["vision_pos_ids"], t["vision_segment_ids"],
                                t["vision_gather_index"], t["vision_token_mask"])
    cos, sin = decoder.rotary(t["position_ids"])
    hidden, past = decoder.decoder(embeds, cos, sin, causal_padding_mask(t["attention_mask"], embeds.shape[1]), None)
    logits = decoder.logits(hidden[:, -1:, :])[:, -1, :].asnumpy()
    # every prompt's beams start from its one prefill (transformers runs k equal copies)
    rows = np.repeat(np.arange(bsz), k)
    logits = logits[rows]
    past = tuple((ops.gather(kk, Tensor(rows.astype(np.int32)), 0), ops.gather(vv, Tensor(rows.astype(np.int32)), 0))
                 for kk, vv in past)
    flat_mask = np.repeat(mask.astype(np.int32), k, axis=0)
    deltas = np.repeat(np.asarray(rope_deltas).reshape(-1), k)
    vocab = logits.shape[-1]
    max_len = s + max_new
    eos = np.array(sorted(set(int(e) for e in eos_ids)), dtype=np.int64)
    keep = max(2, 1 + len(eos)) * k
    top_mask = np.arange(keep) < k

    running = np.full((bsz, k, max_len), pad_id, dtype=np.int64)
    running[:, :, :s] = ids[:, None, :]
    sequences = running.copy()
    running_scores = np.zeros((bsz, k), np.float32)
    running_scores[:, 1:] = NEG
    scores = np.full((bsz, k), NEG, np.float32)
    finished = np.zeros((bsz, k), bool)
    unsatisfied = np.ones((bsz, 1), bool)
    running_bidx = np.full((bsz, k, max_new), -1, np.int64)
    beam_idx = running_bidx.copy()
    cur = s
    while True:
        logp = _log_softmax(logits)
        if process_logits is not None:
            logp = process_logits(running.reshape(bsz * k, max_len)[:, :cur], logp).astype(np.float32)
        acc = (logp.reshape(bsz, k, vocab) + running_scores[:, :, None]).reshape(bsz, k * vocab)
        top = _top(acc, keep)
        top_logp = np.take_along_axis(acc, top, axis=1)
        src = top // vocab
        tok = top % vocab
        top_seq = _gather(running, src).copy()
        top_seq[:, :, cur] = tok
        top_bidx = _gather(running_bidx, src).copy()
        top_bidx[:, :, cur - s] = src + np.arange(bsz)[:, None] * k
        hits = np.isin(tok, eos) | (cur + 1 >= max_len)
        # the best k continuations that did not stop run on
        run_logp = top_logp + hits.astype(np.float32) * NEG
        nxt = _top(run_logp, k)
        running = _gather(top_seq, nxt)
        running_scores = np.take_along_axis(run_logp, nxt, axis=1)
        running_bidx = _gather(top_bidx, nxt)
        # finished hypotheses among the first k candidates join the finished set if good enough
        just = hits & top_mask[None, :]
        fin_logp = top_logp / ((cur + 1 - s) ** length_penalty)
        full = finished.all(axis=-1, keepdims=True) & (early_stopping is True)
        fin_logp = fin_logp + full * NEG + (~unsatisfied) * NEG + (~just) * NEG
        merged_scores = np.concatenate([scores, fin_logp.astype(np.float32)], axis=1)
        best = _top(merged_scores, k)
        sequences = _gather(np.concatenate([sequences, top_seq], axis=1), best)
        scores = np.take_along_axis(merged_scores, best, axis=1)
        beam_idx = _gather(np.concatenate([beam_idx, top_bidx], axis=1), best)
        finished = np.take_along_axis(np.concatenate([finished, just], axis=1), best, axis=1)
        # transformers' stopping rule
        order = running_bidx[..., cur - s].reshape(-1).astype(np.int32)
        cur += 1
        hyp_len = (max_len - s) if (early_stopping == "never" and length_penalty > 0.0) else (cur - s)
        best_running = running_scores[:, :1] / (hyp_len ** length_penalty)
        worst = np.where(finished, scores.min(axis=1, keepdims=True), NEG)
        unsatisfied = unsatisfied & (best_running > worst).any(axis=-1, keepdims=True)
        open_beams = not (finished.all() and early_stopping is True)
        if not (unsatisfied.any() and open_beams and not hits.all()):
            break
        past = tuple((ops.gather(kk, Tensor(order), 0), ops.gather(vv, Tensor(order), 0)) for kk, vv in past)
        flat_mask = np.concatenate([flat_mask, np.ones((bsz * k, 1), np.int32)], axis=1)
        pos = np.broadcast_to((cur - 1 + deltas).astype(np.int32)[None, :, None], (3, bsz * k, 1)).copy()
        new = running.reshape(bsz * k, max_len)[:, cur - 1:cur].astype(np.int32)
        out, past = decoder(decoder.embedding(Tensor(new)), Tensor(pos), Tensor(flat_mask), past, True)
        logits = out[:, -1, :].asnumpy()
    best_seq, best_bidx = sequences[:, 0, :], beam_idx[:, 0, :]
    length = s + int((best_bidx >= 0).sum(axis=1).max())
    return best_seq[:, :length]
