"""Zero-shot variant effect scores from a masked language model (ESM-1v usage).

Meier et al. 2021, "Language models enable zero-shot prediction of the effects of mutations on
protein function", score a mutation x_i -> m at position i by a log-likelihood ratio. For a
multi-mutant the marginal methods sum the per-site scores over its set of mutated sites M:

* "masked-marginals": sum_{i in M} log p(x_i = m_i | x_{-i}) - log p(x_i = wt_i | x_{-i}),
  with position i replaced by `<mask>` in the wild type (one forward per mutated site; the
  paper's best-performing method).
* "wt-marginals": the same with the unmasked wild type as input (one forward in total).
* "pseudo-ppl": PLL(mutant) - PLL(wild type), PLL(s) = sum_i log p(s_i | s_{-i}) with each
  position masked in turn (Salazar et al. 2020): one forward per position per distinct sequence.

Mutations are written `<wt><position><mut>` with 1-based positions ("A42G"); multi-mutants join
them with ":" ("A42G:S50T"). The wild-type letter is checked against the sequence.

This module works with any masked LM whose call `model(input_ids=..., attention_mask=...)`
returns logits `[B, L, V]` (an output with `.logits`, a dict with "logits", or a tuple whose first
element is the logits): the esmkernels fast and reference classes, or transformers' ESM. It is a
foundation module: it imports nothing from `models/`, `ops/` or `reference/`.

Example:
    >>> from esmkernels.core.tokenization import EsmTokenizer
    >>> score_variants(model, EsmTokenizer(), "MKTAYIAK", ["K2A", "T3G:A4C"])  # doctest: +SKIP
    tensor([-1.2031, -3.0245])
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

import torch

METHODS = ("masked-marginals", "wt-marginals", "pseudo-ppl")
_MUTATION = re.compile(r"^([A-Za-z])(\d+)([A-Za-z])$")


def parse_mutations(
    sequence: str, mutant: str, offset: int = 1, alphabet: Collection[str] | None = None
) -> list[tuple[int, str, str]]:
    """Parse "A42G" or "A42G:S50T" into [(0-based index, wild type, mutant)], checked.

    `offset` is the number the first residue of `sequence` has in `mutant` (1: positions are
    1-based; ESM-1v's `--offset-idx`: index = position - offset). Letters of the mutation and
    of the sequence are compared in upper case, so "k2a" on "mkt" is K2A on MKT; the returned
    letters are upper case. With `alphabet` (e.g. the tokenizer's vocabulary), a mutant letter
    outside it is refused too.

    Raises ValueError naming the mutation when the format is wrong, the position is outside the
    sequence, a site repeats, the wild-type letter differs from the sequence (the actual
    residue is named), or the mutant letter is not in `alphabet`.

    Example:
        >>> parse_mutations("MKTAY", "K2A:Y5W")
        [(1, 'K', 'A'), (4, 'Y', 'W')]
    """
    if not isinstance(mutant, str):
        raise TypeError(f"a mutation must be a str like 'A42G', got {type(mutant).__name__}")
    sites: list[tuple[int, str, str]] = []
    for part in mutant.split(":"):
        found = _MUTATION.match(part.strip())
        if found is None:
            raise ValueError(
                f"mutation {mutant!r}: cannot parse {part!r}; expected <wt><position><mut> with "
                "a 1-based position, e.g. 'A42G', and ':' between sites"
            )
        wt, pos, mt = found.group(1).upper(), int(found.group(2)), found.group(3).upper()
        index = pos - offset
        if not 0 <= index < len(sequence):
            raise ValueError(
                f"mutation {mutant!r}: position {pos} is outside the sequence "
                f"({offset}..{len(sequence) - 1 + offset})"
            )
        if sequence[index].upper() != wt:
            raise ValueError(
                f"mutation {mutant!r}: the wild type at position {pos} is "
                f"{sequence[index].upper()!r}, not {wt!r}"
            )
        if alphabet is not None and mt not in alphabet:
            raise ValueError(
                f"mutation {mutant!r}: the mutant residue {mt!r} is not in the vocabulary"
            )
        if any(i == index for i, _, _ in sites):
            raise ValueError(f"mutation {mutant!r}: position {pos} is mutated twice")
        sites.append((index, wt, mt))
    return sites


def _logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    if isinstance(out, dict):
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _log_probs_at(
    model: Any,
    tokens: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    batch_size: int,
    mask_id: int | None,
    own_token: bool = False,
    window: int | None = None,
) -> torch.Tensor:
    """Log-probabilities at position pos[r] of sequence tokens[seq[r]], that position masked.

    tokens: [S, L] token ids (equal lengths, `<cls>` first, `<eos>` last); seq, pos: [R] int64.
    `mask_id=None` leaves the position unmasked (wt-marginals). With `window` (residues) and
    L - 2 > window, each row is cut to `<cls>`, the `window` residues centred on its position
    (shifted to stay inside the sequence), `<eos>`, as for a model with a shorter limit. Runs
    `batch_size` rows per forward. Returns [R, V] fp32, or with `own_token` only the
    log-probability of the token at that position, [R] fp32 (what a pseudo-log-likelihood
    needs, V times less memory).
    """
    n = tokens.shape[1] - 2
    out = []
    for start in range(0, seq.numel(), batch_size):
        s, p = seq[start : start + batch_size], pos[start : start + batch_size]
        rows = torch.arange(s.numel(), device=tokens.device)
        batch = tokens[s]  # [b, L], a copy
        own = tokens[s, p]
        if window is not None and n > window:
            first = (p - 1 - window // 2).clamp(0, n - window)  # [b] first residue of the window
            cols = torch.cat(
                [
                    torch.zeros_like(first)[:, None],
                    1 + first[:, None] + torch.arange(window, device=tokens.device),
                    torch.full_like(first, n + 1)[:, None],
                ],
                dim=1,
            )  # [b, window + 2] columns of the full rows
            batch = batch.gather(1, cols)
            p = p - first
        if mask_id is not None:
            batch[rows, p] = mask_id
        lp = _logits(model, batch)[rows, p].float().log_softmax(-1)  # [b, V]
        out.append(lp.gather(1, own[:, None])[:, 0] if own_token else lp)
    return torch.cat(out)


def score_variants(
    model: Any,
    tokenizer: Any,
    sequence: str,
    mutations: str | Sequence[str],
    method: str = "masked-marginals",
    *,
    batch_size: int = 32,
    window: int | None = None,
    offset: int = 1,
) -> torch.Tensor:
    """Log-likelihood-ratio scores of mutations of `sequence` under a masked LM.

    Args:
        model: a masked LM (see the module docstring); it is run in eval mode under no_grad and
            its training flag is restored afterwards.
        tokenizer: an ESM tokenizer (`esmkernels.EsmTokenizer` or transformers'): one token per
            residue, `<cls>` first, `<eos>` last.
        sequence: the wild type, one letter per residue (either case).
        mutations: one mutation or a list of them, "A42G" or "A42G:S50T" (1-based positions).
        method: "masked-marginals" (default), "wt-marginals" or "pseudo-ppl" (module docstring).
        batch_size: masked copies per forward pass.
        window: for a sequence longer than this many residues (e.g. 1022 for ESM-1v, whose
            absolute positions stop there), each site is scored on the `window` residues
            centred on it (shifted to stay inside the sequence). None: the whole sequence.
        offset: the number of the first residue in `mutations` (see `parse_mutations`).

    Returns:
        [N] float32 on the CPU, N = number of mutations; higher means more likely than the wild
        type. Scores are log-probability differences (natural log).

    Example:
        >>> score_variants(model, tok, "MKTAYIAK", "K2A")  # doctest: +SKIP
        tensor([-1.2031])
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(sequence, str) or not sequence:
        raise ValueError(f"sequence must be a non-empty str, got {sequence!r}")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    sequence = sequence.upper()  # letters of either case, like the mutations
    mutations = [mutations] if isinstance(mutations, str) else list(mutations)
    parsed = [parse_mutations(sequence, m, offset) for m in mutations]

    ids = tokenizer(sequence, return_tensors="pt")["input_ids"]
    letters = {a for a in sequence} | {mt for sites in parsed for _, _, mt in sites}
    vocab = tokenizer.get_vocab()
    unknown = sorted(a for a in letters if a not in vocab)
    if unknown:
        raise ValueError(f"residue letter(s) {unknown} are not in the tokenizer's vocabulary")
    aa = {a: vocab[a] for a in letters}
    if ids.shape != (1, len(sequence) + 2) or ids[0, 1:-1].tolist() != [aa[a] for a in sequence]:
        raise ValueError(
            "the tokenizer must give <cls>, one token per residue, <eos>; got "
            f"{ids.shape[-1]} tokens for {len(sequence)} residues"
        )
    if not parsed:
        return torch.zeros(0)
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    wt = ids.to(device)  # [1, L + 2]; residue i (0-based) is token i + 1

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            if method == "pseudo-ppl":
                scores = _pseudo_ppl(
                    model, wt, parsed, aa, batch_size, tokenizer.mask_token_id, window
                )
            else:
                scores = _marginals(model, wt, parsed, aa, method, batch_size, tokenizer, window)
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)
    return scores.float().cpu()


def _marginals(model, wt, parsed, aa, method, batch_size, tokenizer, window) -> torch.Tensor:
    sites = sorted({i for sites in parsed for i, _, _ in sites})
    if method == "wt-marginals" and (window is None or wt.shape[1] - 2 <= window):
        lp = _logits(model, wt)[0].float().log_softmax(-1)  # [L + 2, V]: one forward
        table = dict(zip(sites, lp[[i + 1 for i in sites]].double().cpu().tolist()))
    else:
        pos = torch.tensor(sites, device=wt.device) + 1
        seq = torch.zeros_like(pos)
        mask_id = tokenizer.mask_token_id if method == "masked-marginals" else None
        lp = _log_probs_at(model, wt, seq, pos, batch_size, mask_id, window=window)
        table = dict(zip(sites, lp.double().cpu().tolist()))
    scores = [sum(table[i][aa[mt]] - table[i][aa[w]] for i, w, mt in s) for s in parsed]
    return torch.tensor(scores, dtype=torch.float64)


def _pseudo_ppl(model, wt, parsed, aa, batch_size, mask_id, window) -> torch.Tensor:
    # Distinct sequences: index 0 is the wild type (also for synonymous "mutations").
    def seq_key(sites):
        return tuple(sorted((i, mt) for i, w, mt in sites if mt != w))

    keys = [()] + sorted({seq_key(s) for s in parsed} - {()})
    tokens = wt.cpu().repeat(len(keys), 1)
    for s, key in enumerate(keys):
        for i, mt in key:
            tokens[s, i + 1] = aa[mt]
    tokens = tokens.to(wt.device)
    L = wt.shape[1] - 2
    seq = torch.arange(len(keys), device=wt.device).repeat_interleave(L)
    pos = torch.arange(1, L + 1, device=wt.device).repeat(len(keys))
    picked = _log_probs_at(model, tokens, seq, pos, batch_size, mask_id, True, window)
    pll = picked.double().view(len(keys), L).sum(1).cpu()
    index = {key: s for s, key in enumerate(keys)}
    return torch.stack([pll[index[seq_key(s)]] - pll[0] for s in parsed])


__all__ = ["METHODS", "parse_mutations", "score_variants"]
