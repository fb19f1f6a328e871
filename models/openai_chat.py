"""Any OpenAI-compatible chat-completions server as a model: vLLM, SGLang, hosted APIs,
`transformers serve`.

Requests go out `concurrency` at a time from a thread pool through one `httpx.Client`:
scoring is I/O-bound and the runner is synchronous, so threads keep `generate` a plain
blocking call, and httpx shares a pool of kept-alive connections between them safely (one
TLS handshake per connection to a hosted API, not per request), with real timeouts and the
usual proxy settings; it is already installed with transformers (huggingface_hub uses it).

Every answer is kept in a `ResponseCache` under a digest of the exact request body, so a
resumed or repeated run sends only what it has not had answered. The API key is read from
the environment variable the config names, goes only into the Authorization header, and is
cut out of every message this module writes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from mibench.errors import MibenchError
from mibench.prompt_styles import PromptStyle, prompt_style
from mibench.prompts import ANSWER_INSTRUCTION, chat_messages, format_prompt
from mibench.records import Sample
from mibench.seeding import stable_seed

from .base import ModelAdapter
from .generation import Generation, letter_probs
from .response_cache import ResponseCache, cache_file, request_bytes, request_key

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A first-token question for the capability probe: answered in one token by any chat model.
PROBE_PROMPT = "Answer with the option's letter from the given choices directly.\nA. yes\nB. no"
MAX_SERVER_MESSAGE = 300  # characters of a server's error text kept in our messages


class OpenAIServerError(MibenchError, RuntimeError):
    """A server that refused or never answered a request; the message names the sample."""


class LogprobsUnavailableError(MibenchError, RuntimeError):
    """Option probabilities asked of a server that returns no log-probabilities."""


RUN_CACHE_DIR = "responses"  # a run's own response cache, under its run directory


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/mibench/openai` (`~/.cache/...`): where an adapter used outside a
    `mibench` run keeps its responses (a run keeps them in its own directory)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mibench" / "openai"


def image_data_url(image: Image.Image) -> str:
    """The image as a `data:image/png;base64,...` URL (PNG: lossless, and the same bytes
    for the same pixels, so the request digest is stable)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def top_alternatives(entry: Mapping[str, Any]) -> dict[str, float]:
    """One token position's top alternatives; tokens that decode alike are merged."""
    merged: dict[str, float] = {}
    for alt in entry.get("top_logprobs") or ():
        token, logprob = str(alt["token"]), float(alt["logprob"])
        merged[token] = (np.logaddexp(merged[token], logprob) if token in merged else logprob)
    return merged


@dataclass(frozen=True, slots=True)
class RequestStats:
    """What an adapter has sent: HTTP requests (retries included), answers read from the
    cache, and retries by cause ("429", "503", "timeout", "connection", ...)."""

    sent: int
    cache_hits: int
    retries: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server says about itself (from the capability probe)."""

    model: str | None
    system_fingerprint: str | None
    logprobs: bool
    logprobs_reason: str | None


class OpenAIChatAdapter(ModelAdapter):
    """A model behind `{base_url}/chat/completions`, asked greedily (temperature 0, a seed).

    `model` is the server's name for it; `api_key_env` the NAME of the environment variable
    holding the key (unset: no key is sent, as local servers need none). `logprobs`:
    "auto" detects once whether the server returns top log-probabilities (vLLM and SGLang
    do; `transformers serve` ignores the request), True requires them, False never asks.
    """

    def __init__(self, base_url: str, model: str, *, name: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", cache_dir: str | None = None,
                 concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 6,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, seed: int = 0,
                 logprobs: bool | str = "auto", top_logprobs: int = 20,
                 instruction: str = ANSWER_INSTRUCTION,
                 prompt: str | dict | PromptStyle | None = None) -> None:
        if not re.match(r"https?://", str(base_url)):
            raise MibenchError(f"model.base_url must be an http(s) URL such as "
                               f"http://127.0.0.1:8000/v1, got {base_url!r}")
        if api_key_env and not ENV_NAME.fullmatch(api_key_env):
            # never echo the value: it may be a key pasted where its variable's name belongs
            raise MibenchError("model.api_key_env must NAME an environment variable (e.g. "
                               "OPENAI_API_KEY), not hold a key; put the key in that variable")
        if logprobs not in ("auto", True, False):
            raise MibenchError(f"model.logprobs must be auto, true or false, got {logprobs!r}")
        if concurrency < 1 or max_retries < 0 or not 1 <= top_logprobs <= 20:
            raise MibenchError("model.concurrency must be >= 1, model.max_retries >= 0 and "
                               f"model.top_logprobs in 1..20 (got {concurrency}, "
                               f"{max_retries}, {top_logprobs})")
        self.base_url = str(base_url).rstrip("/")
        self.model = model
        self.name = name or model.rstrip("/").split("/")[-1]
        self.api_key_env = api_key_env or None
        self.concurrency = concurrency
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.seed = seed
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.instruction = instruction
        self.prompt = prompt_style(prompt)  # a style other than the default replaces instruction
        self.cache_dir = cache_dir
        self._cache: ResponseCache | None = None  # opened on first use (see bind_run_dir)
        self._cache_lock = threading.Lock()
        self._run_dir: Path | None = None
        self._key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if self.api_key_env and not self._key:
            log.info("%s: $%s is unset or empty: no API key is sent (fine for a local server)",
                     self.name, self.api_key_env)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency))
        self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                        thread_name_prefix=f"openai-{self.name}")
        self._lock = threading.Lock()
        self._sent = 0
        self._cache_hits = 0
        self._retries: Counter[str] = Counter()
        self._served: set[tuple[str | None, str | None]] = set()
        self._server: ServerInfo | None = None

    # -- the response cache ----------------------------------------------------------------
    @property
    def cache(self) -> ResponseCache:
        """Responses by request digest: in `cache_dir` if set, else the run's directory once
        `bind_run_dir` named it, else `default_cache_dir()`."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = ResponseCache(cache_file(self.cache_dir or default_cache_dir(),
                                                       self.model))
            return self._cache

    def bind_run_dir(self, run_dir: str | Path) -> None:
        """With no `cache_dir` configured, keep the responses in `<run_dir>/responses/`: a
        resumed run finds them there, and they leave with the run's other files."""
        if self.cache_dir is not None and self._run_dir is None:
            return  # configured: that folder is used whatever the run
        self._run_dir = Path(run_dir)
        self.cache_dir = str(self._run_dir / RUN_CACHE_DIR)
        with self._cache_lock:
            if self._cache is not None and self._cache.path != cache_file(self.cache_dir,
                                                                          self.model):
                self._cache = None

    # -- requests ----------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """`text` with the API key cut out (servers echo keys in 401 messages)."""
        return text.replace(self._key, "<redacted>") if self._key else text

    def _delay(self, key: str, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter drawn from (seed, request, attempt): the same
        schedule in every run, and no two requests waking in step."""
        jitter = random.Random(stable_seed(self.seed, key, attempt)).uniform(0.5, 1.0)
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * jitter
        try:  # a server asking for a pause (429, 503) gets at least that
            delay = max(delay, min(self.max_backoff_s, float(retry_after or 0)))
        except ValueError:
            pass
        return delay

    def _post(self, payload: bytes, key: str, what: str) -> httpx.Response:
        """POST a chat request; retried on 429, 5xx, timeouts and lost connections.

        Returns the final answer (2xx, or a 4xx the caller judges); raises once the
        retries are spent.
        """
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            retry_after, detail = None, ""
            try:
                with self._lock:
                    self._sent += 1
                response = self._client.post(url, content=payload)
            except httpx.TimeoutException:
                cause = "timeout"
            except httpx.TransportError as exc:
                cause = "connection"
                detail = self.redact(str(exc))
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                cause, retry_after = str(response.status_code), response.headers.get(
                    "retry-after")
                detail = self.redact(response.text[:MAX_SERVER_MESSAGE])
            with self._lock:
                self._retries[cause] += 1
            if attempt == self.max_retries:
                raise OpenAIServerError(
                    f"{what}: no answer from {url} after {attempt + 1} tries (last: {cause}"
                    f"{': ' + detail if detail else ''}); answers "
                    f"received so far are cached in {self.cache.path}: run again to resume")
            delay = self._delay(key, attempt, retry_after)
            log.warning("%s: %s from %s, retry %d/%d in %.1f s", what, cause, url, attempt + 1,
                        self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def refusal(self, response: httpx.Response, what: str) -> OpenAIServerError:
        """The error for an answer that retrying cannot change (401, 404, 400, ...)."""
        hint = {401: f"set the key in ${self.api_key_env} (model.api_key_env names it)",
                403: f"the key in ${self.api_key_env} may not use model {self.model!r}",
                404: f"check model.base_url (usually ends in /v1) and model.model "
                     f"(GET {self.base_url}/models lists the server's names)"}.get(
                         response.status_code, "the server rejected the request as sent")
        message = self.redact(response.text[:MAX_SERVER_MESSAGE])
        return OpenAIServerError(f"{what}: HTTP {response.status_code} from {self.base_url}: "
                                 f"{message}; {hint}")

    def _read(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The cached form of a 2xx answer: text, finish reason, top log-probs, server ids."""
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            positions = ((choice.get("logprobs") or {}).get("content")) or None
            top = [top_alternatives(p) for p in positions] if positions else None
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OpenAIServerError(
                f"{what}: {self.base_url} answered HTTP {response.status_code} without a chat "
                f"completion ({type(exc).__name__}: {self.redact(str(exc))[:200]}); is it an "
                "OpenAI-compatible server?") from None
        return {"text": text, "finish_reason": choice.get("finish_reason"),
                "top_logprobs": top, "model": body.get("model"),
                "system_fingerprint": body.get("system_fingerprint")}

    def _answer(self, payload: bytes, key: str, what: str) -> dict[str, Any]:
        response = self._post(payload, key, what)
        if not response.is_success:
            raise self.refusal(response, what)
        value = self._read(response, what)
        self.cache.put(key, value)
        return value

    # -- capability probe --------------------------------------------------------------------
    def _probe_body(self, logprobs: bool) -> dict[str, Any]:
        body = {"model": self.model, "max_tokens": 1, "temperature": 0, "seed": self.seed,
                "messages": [{"role": "user",
                              "content": [{"type": "text", "text": PROBE_PROMPT}]}]}
        if logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def _probe(self, logprobs: bool) -> tuple[dict[str, Any] | None, str | None]:
        """One tiny request (cached like any other, refusals too): the answer, or why not."""
        payload = request_bytes(self._probe_body(logprobs))
        key = request_key(payload)
        value = self.cache.get(key)
        if value is None:
            response = self._post(payload, key, f"{self.name}: capability probe")
            if response.is_success:
                value = self._read(response, f"{self.name}: capability probe")
            elif logprobs and response.status_code in (400, 422):
                value = {"refused": response.status_code,
                         "message": self.redact(response.text[:MAX_SERVER_MESSAGE])}
            else:
                raise self.refusal(response, f"{self.name}: capability probe")
            self.cache.put(key, value)
        if "refused" in value:
            return None, f"HTTP {value['refused']}: {value['message']}"
        return value, None

    def server(self) -> ServerInfo:
        """What the server is and whether it gives log-probabilities: asked once."""
        with self._lock:
            if self._server is not None:
                return self._server
        value, reason = None, "not asked (model.logprobs: false)"
        if self.logprobs in ("auto", True):
            value, reason = self._probe(logprobs=True)
        supported = value is not None and bool(value["top_logprobs"])
        if value is not None and not supported:
            reason = "the server answered without log-probabilities"
        if self.logprobs is True and not supported:
            raise LogprobsUnavailableError(
                f"{self.name}: model.logprobs is true but {self.base_url} gives no "
                f"log-probabilities ({reason}); set model.logprobs=auto to score without")
        if value is None:  # refused, or not asked: the plain probe tells what the server is
            value, _ = self._probe(logprobs=False)
        info = ServerInfo(value["model"], value["system_fingerprint"], supported,
                          None if supported else reason)
        with self._lock:
            self._server = info
        return info

    # -- the model contract ------------------------------------------------------------------
    def messages(self, sample: Sample, suffix: str = "") -> list[dict[str, Any]]:
        """The chat of the prompt style (the suite's: one user turn, image first, with
        `instruction`), each image as a data URL."""
        if self.prompt.name == "default":
            turns = chat_messages(sample, self.instruction, suffix)
        else:
            turns = self.prompt.messages(sample, suffix)
        return [{**turn, "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(sample.image)}}
            if part["type"] == "image" else part for part in turn["content"]]}
            for turn in turns]

    def request_body(self, sample: Sample, *, max_new_tokens: int, stop: Sequence[str] = (),
                     suffix: str = "", repetition_penalty: float = 1.0) -> dict[str, Any]:
        """The exact chat-completions request for one sample (its digest keys the cache).

        `repetition_penalty` is not in OpenAI's API; vLLM and SGLang take it as an extra
        field (transformers' meaning), hosted APIs refuse it. Sent only when not 1.0.
        """
        body: dict[str, Any] = {"model": self.model, "messages": self.messages(sample, suffix),
                                "max_tokens": max_new_tokens, "temperature": 0,
                                "seed": self.seed}
        if stop:
            body["stop"] = list(stop)
        if repetition_penalty != 1.0:
            body["repetition_penalty"] = repetition_penalty
        if self.server().logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def generate(self, samples: Sequence[Sample], *, max_new_tokens: int,
                 stop: Sequence[str] = (), suffix: str = "", repetition_penalty: float = 1.0
                 ) -> list[Generation]:
        """Each sample's greedy answer: from the cache, or asked `concurrency` at a time.

        Every answer is cached as it arrives; once a request fails for good no new one is
        sent, those in flight finish (and are cached), then the error is raised: running
        again resumes from the cache.
        """
        self.server()
        payloads = list(self._pool.map(lambda s: request_bytes(self.request_body(
            s, max_new_tokens=max_new_tokens, stop=stop, suffix=suffix,
            repetition_penalty=repetition_penalty)), samples))
        keys = [request_key(p) for p in payloads]
        cached = {k for k in keys if k in self.cache}
        with self._lock:
            self._cache_hits += sum(k in cached for k in keys)
        failed = threading.Event()

        def answer(payload: bytes, key: str, what: str) -> None:
            if failed.is_set():  # one request failed for good: send no new ones
                return
            try:
                self._answer(payload, key, what)
            except BaseException:
                failed.set()
                raise

        futures: dict[str, Future] = {}
        for sample, payload, key in zip(samples, payloads, keys):
            if key not in cached and key not in futures:
                futures[key] = self._pool.submit(answer, payload, key,
                                                 f"{self.name}: sample {sample.id!r}")
        wait(futures.values())  # those in flight land (and are cached) before any raise
        for future in futures.values():
            if future.exception() is not None:
                raise future.exception()
        out = []
        for key in keys:
            value = self.cache.get(key)
            self._served.add((value["model"], value["system_fingerprint"]))
            top = value["top_logprobs"]
            out.append(Generation(value["text"], value["finish_reason"],
                                  None if top is None else tuple(top), key in cached))
        return out

    def option_probs(self, samples: Sequence[Sample], prepared: object = None
                     ) -> list[np.ndarray]:
        """Option probabilities from the first answer token's top log-probabilities."""
        info = self.server()
        if not info.logprobs:
            raise LogprobsUnavailableError(
                f"{self.name}: {self.base_url} gives no log-probabilities "
                f"({info.logprobs_reason}), so options cannot be scored by likelihood; score "
                "by generation, or serve the model with vLLM or SGLang, which return them")
        generations = self.generate(samples, max_new_tokens=1)
        probs = []
        for sample, generation in zip(samples, generations):
            if not generation.top_logprobs:
                raise OpenAIServerError(f"{self.name}: sample {sample.id!r}: the server "
                                        "answered without log-probabilities this time")
            probs.append(letter_probs(generation.top_logprobs[0], sample.letters))
        return probs

    def render(self, sample: Sample) -> str:
        """The text the server is sent (its chat template is the server's own)."""
        return format_prompt(sample, self.instruction)

    def logprobs_unavailable(self) -> str | None:
        info = self.server()
        return None if info.logprobs else f"{self.base_url}: {info.logprobs_reason}"

    def prompt_length(self, sample: Sample) -> int:
        """Characters of the rendered prompt: the server tokenizes, the runner only sorts."""
        if self.prompt.name != "default":
            return len(self.prompt.user_text(sample))
        return len(format_prompt(sample, self.instruction))

    def stats(self) -> RequestStats:
        with self._lock:
            return RequestStats(self._sent, self._cache_hits, dict(self._retries))

    def served(self) -> list[dict[str, str | None]]:
        """Every (model id, system_fingerprint) the answers so far came with."""
        return [{"model": m, "system_fingerprint": f}
                for m, f in sorted(self._served, key=lambda mf: json.dumps(mf))]

    def fetch_report(self) -> dict:
        stats = self.stats()
        return {"requests": stats.sent, "cache_hits": stats.cache_hits,
                "retries": dict(sorted(stats.retries.items())), "served": self.served()}

    def describe(self) -> dict:
        info = self.server()
        prompt = {} if self.prompt.name == "default" else {"prompt": self.prompt.describe()}
        return {
            **prompt, "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "backend": "openai-chat-completions", "base_url": self.base_url,
            "model": self.model, "api_key_env": self.api_key_env, "temperature": 0,
            "seed": self.seed, "instruction": self.instruction, "images": "png data URL",
            "server": {"model": info.model, "system_fingerprint": info.system_fingerprint},
            "logprobs": {"available": info.logprobs, "top_logprobs": self.top_logprobs,
                         "reason": info.logprobs_reason},
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __repr__(self) -> str:  # the default would be harmless; this one is short
        return f"{type(self).__name__}({self.model!r} at {self.base_url})"

