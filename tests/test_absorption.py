"""SAEBench's first-letter absorption measure (``absorption.py``) on planted dictionaries whose
answer is known: one that has a latent per letter absorbs nothing; one in which half of the S-words
lose the S latent to token-specific latents (the paper's "short" vs "starts with S") absorbs about
half of letter S, fully, and nothing elsewhere."""

from __future__ import annotations

import torch
from torch import Tensor

from monosemantic.absorption import LETTERS, absorption, train_probe

S = LETTERS.index("s")
N_PER_LETTER, N_S, N_TOKEN_LATENTS = 30, 60, 30
D = 26 + N_TOKEN_LATENTS + 8  # letter directions, one direction per absorbed word, noise


def words(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(N, D) word activations, (N,) first letters, (N,) index of the word's own token latent or -1.
    Every letter's words point along its letter direction; the first N_TOKEN_LATENTS S-words also
    along a direction of their own."""
    g = torch.Generator().manual_seed(seed)
    letters = torch.cat([torch.full((N_S if c == S else N_PER_LETTER,), c) for c in range(26)])
    x = 0.1 * torch.randn(len(letters), D, generator=g)
    x[torch.arange(len(letters)), letters] += 3.0
    token = torch.full((len(letters),), -1)
    s_rows = (letters == S).nonzero().flatten()[:N_TOKEN_LATENTS]
    token[s_rows] = torch.arange(N_TOKEN_LATENTS)
    x[s_rows, 26 + torch.arange(N_TOKEN_LATENTS)] += 3.0
    return x, letters, token


def dictionary(absorbing: bool):
    """W_dec (D, n) and an encoder: 26 letter latents, plus (``absorbing``) one latent per marked
    S-word along (e_s + e_word)/√2 that fires on it instead of the S latent."""
    letter_dirs = torch.eye(D)[:, :26]
    eye = torch.eye(D)
    token_dirs = (eye[:, [S] * N_TOKEN_LATENTS] + eye[:, 26 : 26 + N_TOKEN_LATENTS]) / 2**0.5
    W_dec = torch.cat([letter_dirs, token_dirs], dim=1) if absorbing else letter_dirs

    def encode(x: Tensor) -> Tensor:
        f = torch.relu(x @ W_dec)
        f[:, :26] = torch.where(f[:, :26] > 1.0, f[:, :26], torch.zeros(()))  # a threshold, as a JumpReLU
        if absorbing:
            tokens = f[:, 26:]
            own = x[:, 26 : 26 + N_TOKEN_LATENTS] > 1.5  # the word's own direction is present
            f[:, 26:] = torch.where(own, tokens, torch.zeros(()))
            f[own.any(dim=1), S] = 0.0  # the token latent has taken over: the S latent is silent
        return f

    return W_dec, encode


def measure(absorbing: bool):
    x_train, y_train, _ = words(0)
    x_test, y_test, _ = words(1)
    torch.manual_seed(0)
    probe = train_probe(x_train, y_train, len(LETTERS))
    W_dec, encode = dictionary(absorbing)
    return absorption(encode, W_dec, x_train, y_train, x_test, y_test, probe)


def test_a_latent_per_letter_absorbs_nothing() -> None:
    result = measure(absorbing=False)
    assert len(result.letters) == 26  # every letter's probe is good and has enough true positives
    assert result.mean_absorption_fraction == 0.0 and result.mean_full_absorption == 0.0
    assert all(r.main_latents == [LETTERS.index(r.letter)] for r in result.letters)


def test_token_latents_that_take_over_half_of_s_absorb_half_of_s() -> None:
    result = measure(absorbing=True)
    by_letter = {r.letter: r for r in result.letters}
    s = by_letter["s"]
    assert S in s.main_latents  # the S latent stays the main one; single-word latents do not split it
    share = N_TOKEN_LATENTS / N_S  # of the S-words, those whose own latent took over
    assert abs(s.absorption_fraction - share) < 0.1, s
    assert abs(s.full_absorption - share) < 0.1, s
    others = [r for r in result.letters if r.letter != "s"]
    assert all(r.absorption_fraction == 0.0 and r.full_absorption == 0.0 for r in others)
    assert abs(result.mean_absorption_fraction - s.absorption_fraction / 26) < 1e-9
