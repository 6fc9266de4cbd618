"""The requests that run the language model: steering (whole, or streamed as server-sent events)
and "analyse a text". They call the same functions as the ``steer`` and ``inspect`` commands
(``stages.steer.run_steer``, ``features.inspect.Inspector``), under the model lock (one at a
time; others wait their turn), with one ``SteerTarget`` and one ``Inspector`` kept per served run
and dictionary. Inputs are bounded here: prompt and text length, number of features, scales,
tokens generated, and the model's context length."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from monosemantic.config import GenerateConfig
from monosemantic.errors import UserError
from monosemantic.stages.steer import SteerRequest
from monosemantic.web.state import MAX_STREAMS, Served, ServedRun

MAX_FEATURES = 8
"""Features steered together, at most."""
MAX_SCALE = 100.0
"""|scale| at most (a multiple of the feature's maximum activation)."""
MAX_NEW_TOKENS = 128
"""Tokens generated per completion, at most (a server may allow fewer: ``Served.max_new_tokens``)."""


class Busy(UserError):
    """Too many steering streams wait for the model (HTTP 503)."""


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def check_request(served: Served, r: ServedRun, sae: str, req: SteerRequest) -> None:
    """The checks a steering request can pass before the model loads.

    Raises:
        UserError: no feature, too many, an id the dictionary lacks, a scale count that matches
            neither 1 nor the features, an unknown mode, a scale that is not finite or too large.
        NotFound: the dictionary is not analysed in the run.
    """
    with r.connect() as con:
        n = r.check_sae(con, sae)
    if len(req.features) > MAX_FEATURES:
        raise UserError(f"steer at most {MAX_FEATURES} features at once, not {len(req.features)}")
    req.interventions()
    for j in req.features:
        if j >= n:
            raise UserError(f"{sae} has no feature {j}: ids run from 0 to {n - 1}")
    for s in req.scales:
        if not (math.isfinite(s) and abs(s) <= MAX_SCALE):
            raise UserError(f"a scale must be a number between -{MAX_SCALE:g} and {MAX_SCALE:g}, not {s}")


def generate_config(served: Served, max_new_tokens: int, **settings: Any) -> GenerateConfig:
    """The request's settings, its token count capped at the server's."""
    return GenerateConfig(max_new_tokens=min(max_new_tokens, served.max_new_tokens), **settings)


def _target(served: Served, r: ServedRun, sae: str) -> Any:
    """``models.use_with`` for the run's ``SteerTarget`` on ``sae`` (a context manager)."""
    from monosemantic.steer_eval import load_target

    def make(lm: Any) -> Any:
        with r.connect() as con:
            return load_target(r.path, sae, lm, con)

    return served.models.use_with(r.path, f"steer:{sae}", make)


def _check_length(target: Any, prompt: str, cfg: GenerateConfig) -> None:
    """Raises UserError when prompt and completion would not fit the model's context."""
    from monosemantic.steer import encode_prompts

    limit = target.lm.max_positions
    n = len(encode_prompts(target.lm, [prompt], cfg.chat)[0])
    if limit is not None and n + cfg.max_new_tokens > limit:
        raise UserError(
            f"the prompt is {n} tokens and {cfg.max_new_tokens} more would be generated, but "
            f"{target.lm.name} reads at most {limit}: shorten the prompt"
        )


def completion_json(c: Any, features: list[int]) -> dict[str, Any]:
    """A ``steer_score.Completion`` as JSON (nan as null)."""
    return {
        "text": c.text,
        "n_tokens": c.n_tokens,
        "logprob_per_token": _finite(c.logprob_per_token) if c.n_tokens else None,
        "watched": [
            {"feature": j, "fire_fraction": _finite(f), "max_relative": _finite(m)}
            for j, f, m in zip(features, c.fire_fraction, c.max_relative, strict=True)
        ],
        "promoted_logmass": _finite(c.promoted_logmass),
    }


def side_by_side_json(result: Any, prompt: str) -> dict[str, Any]:
    """``stages.steer.SideBySide`` as JSON."""
    watch = list(dict.fromkeys(iv.feature for iv in result.interventions))
    return {
        "prompt": prompt,
        "interventions": [iv._asdict() for iv in result.interventions],
        "base": completion_json(result.base, watch),
        "steered": completion_json(result.steered, watch),
    }


def steer(
    served: Served, r: ServedRun, sae: str, req: SteerRequest, prompt: str, cfg: GenerateConfig
) -> dict[str, Any]:
    """The unsteered and steered completions, whole (waits for the model)."""
    from monosemantic.stages.steer import require_prompt, run_steer

    check_request(served, r, sae, req)
    require_prompt(prompt)
    with _target(served, r, sae) as target:
        _check_length(target, prompt, cfg)
        return side_by_side_json(run_steer(target, req, prompt, cfg), prompt)


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Gone(Exception):
    """The client closed the stream: stop generating."""


class _TextStream:
    """Token ids -> the text they add (a character cut between tokens waits for its end)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new


def _work(
    served: Served,
    r: ServedRun,
    sae: str,
    req: SteerRequest,
    prompt: str,
    cfg: GenerateConfig,
    put: Callable[[str | None], None],
    gone: threading.Event,
) -> None:
    """The generation thread of one stream: events into ``put``, None at the end."""
    from monosemantic.stages.steer import run_steer

    try:
        if served.models.busy:
            put(sse("queued", {"message": "waiting for the model: another request is using it"}))
        with _target(served, r, sae) as target:
            if gone.is_set():
                return
            _check_length(target, prompt, cfg)
            put(sse("start", {"prompt": prompt}))
            streams = {"base": _TextStream(target.lm.tokenizer), "steered": _TextStream(target.lm.tokenizer)}

            def on_token(which: str, token: int) -> None:
                if gone.is_set():
                    raise _Gone
                if text := streams[which].add(token):
                    put(sse("token", {"which": which, "text": text}))

            result = run_steer(target, req, prompt, cfg, on_token)
        put(sse("done", side_by_side_json(result, prompt)))
    except _Gone:
        pass
    except UserError as e:
        put(sse("error", {"error": str(e), "status": 400}))
    except Exception as e:  # the traceback to the log, a message to the client
        import logging

        logging.getLogger(__name__).exception("steering stream failed")
        put(
            sse(
                "error",
                {"error": f"internal error ({type(e).__name__}); see the server's log", "status": 500},
            )
        )
    finally:
        put(None)
        served.stream_closed()


def open_stream(
    served: Served, r: ServedRun, sae: str, req: SteerRequest, prompt: str, cfg: GenerateConfig
) -> AsyncIterator[str]:
    """Server-sent events of a steering request: ``queued`` (when it waits for the model),
    ``start``, ``token`` {which: base | steered, text} as each token comes (all of the unsteered
    completion, then the steered one), then ``done`` (as ``steer`` returns) or ``error``
    {error, status}. The checks run first (a bad request gets a 4xx, not a stream).

    Raises:
        UserError, NotFound: see ``check_request``; Busy: ``MAX_STREAMS`` streams already open.
    """
    from monosemantic.stages.steer import require_prompt

    check_request(served, r, sae, req)
    require_prompt(prompt)
    if served.streams >= MAX_STREAMS:
        raise Busy("the server is steering for too many clients already: try again in a minute")
    return _events(served, r, sae, req, prompt, cfg)


async def _events(
    served: Served, r: ServedRun, sae: str, req: SteerRequest, prompt: str, cfg: GenerateConfig
) -> AsyncIterator[str]:
    if not served.stream_opened():
        yield sse("error", {"error": "the server is steering for too many clients already", "status": 503})
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    gone = threading.Event()

    def put(item: str | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody listens any more
            gone.set()

    thread = threading.Thread(
        target=_work, args=(served, r, sae, req, prompt, cfg, put, gone), daemon=True, name="steer-stream"
    )
    thread.start()
    try:
        while (item := await queue.get()) is not None:
            yield item
    finally:
        gone.set()  # a client that left stops the generation at its next token


def inspect(served: Served, r: ServedRun, sae: str, text: str, per_token: int, top: int) -> dict[str, Any]:
    """Which features fire on ``text``, per token and over the whole text
    (``features.inspect.Inspection`` as JSON), with the dictionary's size.

    Raises:
        UserError: an empty text, or one longer than the model reads.
        NotFound: the dictionary is not analysed in the run.
    """
    from monosemantic.features.inspect import open_inspector

    with r.connect() as con:
        n = r.check_sae(con, sae)
    if not text.strip():
        raise UserError("the text is empty: paste some text to analyse")
    with served.models.use_with(
        r.path, f"inspect:{sae}", lambda lm: open_inspector(r.path, sae, lm, con=r.open_ro())
    ) as inspector:
        ids = inspector.token_ids(text)
        limit = inspector.lm.max_positions
        if limit is not None and len(ids) > limit:
            raise UserError(f"the text is {len(ids)} tokens; {inspector.lm.name} reads at most {limit}")
        result = inspector.inspect_ids(ids, per_token=per_token, top=top)
    out = asdict(result)
    for t in out["tokens"]:
        t["features"] = [{**f, "relative": _finite_or_none(f["relative"])} for f in t["features"]]
    out["n_features"] = n
    return out


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None else _finite(x)
