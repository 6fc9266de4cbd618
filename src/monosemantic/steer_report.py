"""The report's steering section: every effect ``steer --eval`` (or the demo) stored, as tables
with one example completion each. An HTML string; ``features/report.py`` places it."""

from __future__ import annotations

import html
import json
import sqlite3
from itertools import groupby

from monosemantic.steer_eval import stored_effects


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def steered_features(con: sqlite3.Connection) -> set[tuple[str, int]]:
    """(dictionary, feature) of every stored effect: the report gives each a page."""
    return {(r["sae"], int(r["feature"])) for r in stored_effects(con)}


def _completions(row: sqlite3.Row) -> str:
    """Every prompt's unsteered and steered completion at the row's scale, folded."""
    pairs = zip(json.loads(row["base_completions"]), json.loads(row["completions"]), strict=True)
    body = "".join(f"<tr><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>" for b, c in pairs)
    return (
        f"<details><summary>all {row['n_prompts']} completions at scale {row['scale']:g}</summary>"
        f"<table><tr><th>unsteered</th><th>steered</th></tr>{body}</table></details>"
    )


def steering_section(con: sqlite3.Connection) -> str:
    """'' when nothing was measured."""
    rows = stored_effects(con)
    if not rows:
        return ""
    parts = [
        "<h3>Steering: measured effects</h3><p class='note'>Each feature clamped (or added) at a multiple "
        "of its maximum activation at every position while the model continues neutral prompts. "
        "<b>fires</b>: share of completions on which the feature fires when the clean model rereads them "
        "(unsteered in brackets); <b>rel</b>: its largest activation there / its max; <b>promoted</b>: "
        "mean log Σ p of its promoted tokens; <b>log-prob</b>: clean-model log p per generated token "
        "(fluency). <code>monosemantic steer RUN --feature ID --eval --sweep 0,5,10</code> adds rows.</p>"
    ]
    key = lambda r: (r["sae"], r["feature"], r["steered"], r["mode"], r["keep_error"], r["settings"])  # noqa: E731
    for (sae, feature, steered, mode, keep, settings), group in groupby(rows, key=key):
        g = list(group)
        s = json.loads(settings)
        others = [j for j in json.loads(steered) if j != feature]
        title = (
            f"{html.escape(sae)} <a href='features/{html.escape(sae)}-{feature}.html'>#{feature}</a>, {mode}"
            f"{', with ' + ', '.join(f'#{j}' for j in others) if others else ''}, error term "
            f"{'kept' if keep else 'dropped'}, {g[0]['n_prompts']} prompts × {s['max_new_tokens']} tokens"
        )
        body = "".join(
            f"<tr><td>{r['scale']:g}</td><td>{r['fire_rate']:.2f} ({r['base_fire_rate']:.2f})</td>"
            f"<td>{r['relative']:.2f} ({r['base_relative']:.2f})</td>"
            f"<td>{_f(r['promoted_logmass'])} ({_f(r['base_promoted_logmass'])})</td>"
            f"<td>{r['logprob']:.2f} ({r['base_logprob']:.2f})</td>"
            f"<td class='ctx'>{html.escape(r['example'])}</td></tr>"
            for r in g
        )
        parts.append(
            f"<p><b>{title}</b></p><table><tr><th>scale × max</th><th>fires</th><th>rel</th><th>promoted</th>"
            f"<th>log-prob</th><th>example (first prompt)</th></tr>{body}</table>"
            f"<p class='note'>unsteered: {html.escape(g[0]['base_example'])}</p>" + _completions(g[-1])
        )
    return "\n".join(parts)
