"""A Gymnasium environment over the CRM API and the verifier, for RL tooling.

`CrmEnv` speaks only HTTP: `reset` opens an episode of a golden case, each `step` is one
tool call (or the final reply, which the verifier scores), `close` drops the episode.
Tool results are shown exactly as LLM agents see them (`protocol.tool_result_content`).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium.spaces import Text
from numpy.typing import NDArray

from agent_runner.protocol import tool_result_content
from crmbench_clients import errors as client_errors
from crmbench_clients.crm_api import SyncCrmApiClient
from crmbench_clients.verifier import SyncVerifierClient
from crmbench_contracts.cases import Case
from crmbench_corpus.store import default_corpus_dir, load_index
from crmbench_llm.types import Message, ToolCall

ENV_ID = "crmbench/Crm-v0"
"""The id `register_env()` registers, for `gymnasium.make`."""

OBSERVATION_MAX_LENGTH = 1_000_000
ACTION_MAX_LENGTH = 250_000
SAMPLED_REPLY_MAX_LENGTH = 200
"""Longest reply text `CrmActionSpace.sample` draws (random replies only need to exist)."""

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _text_charset() -> str:
    """Every printable ASCII character and whitespace, plus the Latin letters, punctuation
    and currency signs that names, notes and LLM replies commonly hold."""
    extra = (
        chr(code)
        for low, high in ((0xA1, 0x17F), (0x2010, 0x205E), (0x20A0, 0x20C0))
        for code in range(low, high + 1)
    )
    return string.printable + "".join(char for char in extra if char.isprintable())


TEXT_CHARSET = _text_charset()
"""Characters of both spaces. Tool results are JSON whose control characters are escaped;
only text an agent writes outside this set (say CJK) can leave the observation space."""


# --------------------------------------------------------------------------------- errors


class CrmEnvError(Exception):
    """An error of the environment; `code` is a stable machine code."""

    code: str = "CRM_ENV_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class EpisodeNotRunning(CrmEnvError, gymnasium.error.ResetNeeded):
    """`step` was called before `reset`, or after the episode ended."""

    code = "RESET_NEEDED"


class EnvironmentClosed(CrmEnvError, gymnasium.error.ClosedEnvironmentError):
    """`reset` or `step` was called after `close`."""

    code = "ENV_CLOSED"


class InvalidCrmAction(CrmEnvError, gymnasium.error.InvalidAction, ValueError):
    """The action is not a tool call or a reply in the documented shape."""

    code = "INVALID_ACTION"


class ServiceError(CrmEnvError):
    """The CRM API or the verifier failed (not a refusal an agent can act on)."""

    def __init__(self, service: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{service} answered {status} {code}: {message}", code=code)
        self.service = service
        self.status = status
        """HTTP status; 0 when no response arrived (connection refused, timeout)."""

    @classmethod
    def from_client(cls, error: client_errors.ServiceError) -> ServiceError:
        """The env's form of a service client's error (same service, status and code)."""
        return cls(error.service, error.status or 0, error.code, error.message)


@contextmanager
def _service_errors() -> Iterator[None]:
    """Raises the services' failures as this module's ServiceError (a CrmEnvError)."""
    try:
        yield
    except client_errors.ServiceError as exc:
        raise ServiceError.from_client(exc) from exc


# -------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class ToolCallAction:
    """Call the tool `tool` with `arguments` (POST /tools/{tool})."""

    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ReplyAction:
    """End the episode with this final answer to the user; the verifier scores it."""

    text: str


def parse_action(action: str | Mapping[str, Any]) -> ToolCallAction | ReplyAction:
    """The action a step asked for: `{"tool": name, "arguments": {...}}` or `{"reply": text}`,
    as a JSON string or a mapping. Raises InvalidCrmAction naming what is wrong."""
    if isinstance(action, str):
        try:
            value = json.loads(action)
        except ValueError as exc:
            raise InvalidCrmAction(
                f"the action is not valid JSON ({exc}); send "
                '{"tool": <name>, "arguments": {...}} or {"reply": <text>}'
            ) from None
    elif isinstance(action, Mapping):
        value = action
    else:
        raise InvalidCrmAction(
            f"the action must be a JSON string or a mapping, not {type(action).__name__}"
        )
    if not isinstance(value, Mapping):
        raise InvalidCrmAction(f"the action must be a JSON object, not {type(value).__name__}")
    keys = set(value)
    if "reply" in keys and "tool" in keys:
        raise InvalidCrmAction("give 'tool' (a tool call) or 'reply' (the final answer), not both")
    if "reply" in keys:
        if keys != {"reply"}:
            raise InvalidCrmAction(
                f"a reply action has only the key 'reply'; remove {sorted(keys - {'reply'})}"
            )
        if not isinstance(value["reply"], str):
            raise InvalidCrmAction(f"'reply' must be a string, not {type(value['reply']).__name__}")
        return ReplyAction(value["reply"])
    if "tool" not in keys:
        raise InvalidCrmAction(
            f"the action needs 'tool' (a tool call) or 'reply' (the final answer); got keys "
            f"{sorted(keys)}"
        )
    if not keys <= {"tool", "arguments"}:
        raise InvalidCrmAction(
            "a tool call has only the keys 'tool' and 'arguments'; remove "
            f"{sorted(keys - {'tool', 'arguments'})}"
        )
    tool = value["tool"]
    if not isinstance(tool, str) or not _TOOL_NAME.match(tool):
        raise InvalidCrmAction(
            f"'tool' must be a tool name (letters, digits, _ or -, at most 64), not {tool!r}"
        )
    arguments = value.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise InvalidCrmAction(f"'arguments' must be a JSON object, not {type(arguments).__name__}")
    try:
        json.dumps(arguments, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidCrmAction(f"'arguments' must hold only JSON values: {exc}") from None
    return ToolCallAction(tool, dict(arguments))


class CrmActionSpace(Text):
    """The JSON form of the actions: a Text space whose members are the strings `step`
    accepts, and whose samples are a random tool called with no arguments, or a random
    reply. (`step` also accepts the same action as a mapping.)"""

    def __init__(self, tool_names: Sequence[str], *, seed: int | None = None) -> None:
        super().__init__(ACTION_MAX_LENGTH, min_length=2, charset=TEXT_CHARSET, seed=seed)
        self.tool_names = tuple(tool_names)

    def contains(self, x: Any) -> bool:
        if not super().contains(x):
            return False
        try:
            parse_action(x)
        except InvalidCrmAction:
            return False
        return True

    def sample(
        self,
        mask: tuple[int | None, NDArray[np.int8] | None] | None = None,
        probability: tuple[int | None, NDArray[np.float64] | None] | None = None,
    ) -> str:
        if mask is not None or probability is not None:
            raise ValueError("CrmActionSpace samples whole actions; character masks do not apply")
        pick = int(self.np_random.integers(len(self.tool_names) + 1))
        if pick < len(self.tool_names):
            return json.dumps({"tool": self.tool_names[pick], "arguments": {}})
        length = int(self.np_random.integers(SAMPLED_REPLY_MAX_LENGTH + 1))
        reply = "".join(self.np_random.choice(self.character_list, size=length))
        return json.dumps({"reply": reply}, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"CrmActionSpace(tools={len(self.tool_names)}, max_length={self.max_length})"


# ---------------------------------------------------------------------------- environment


@functools.lru_cache(maxsize=4)
def _corpus(directory: Path) -> dict[str, Case]:
    # Cases are frozen models, so every env of one process can share one index.
    return load_index(directory)


@dataclass
class _Episode:
    """The live episode: its credentials, its case, and the conversation so far."""

    episode_id: str
    token: str
    case: Case
    transcript: list[dict[str, Any]]
    tool_calls: int = 0
    ended: str | None = None
    """Why no more steps are allowed ("terminated", "truncated", "failed ..."), once so."""
    dropped: bool = False
    """The CRM API has deleted it."""


class CrmEnv(gymnasium.Env[str, str | Mapping[str, Any]]):
    """One golden case per episode, played over the CRM API and scored by the verifier.

    - `reset(seed=..., options={"case_id": ...})` opens an episode. Without a case id the
      case is drawn from `case_ids` (default: the whole corpus) with the env's `np_random`,
      so a seed fixes the sequence of cases. The observation is the user's messages (the
      case's turns, joined by blank lines); `info` has `episode_id`, `turns`, `today`,
      `actor` and `tools` (OpenAI function schemas).
    - `step({"tool": name, "arguments": {...}})` calls the tool: the observation is the
      result as an LLM agent sees it (a refusal is `{"status": 4xx, "error": {...}}` and
      does not end the episode), reward 0. `info`: `step`, `tool`, `tool_call_id`,
      `status`, `ok`, `error_code`, `latency_ms`.
    - `step({"reply": text})` ends the episode: the verifier scores it, the reward is the
      score, `terminated` is True, the observation is "" and `info` is the reward record.
    - The `max_steps`-th tool call without a reply truncates: the verifier scores the
      episode with an empty reply, the reward is that score and `info` holds the tool
      call's fields plus the reward record's.
    Actions may be JSON strings or mappings; `action_space` describes the JSON form.

    The policy never sees which golden case it plays: the case id maps to the committed
    expected state, so neither observations nor `info` carry it (the reward record in
    `info` comes without its `case_id`). Build the env with `expose_case_id=True` to debug:
    then reset's `info` and the reward record have `case_id`.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        crm_api_url: str,
        verifier_url: str,
        admin_key: str,
        *,
        case_ids: Sequence[str] | None = None,
        max_steps: int = 30,
        timeout: float = 30.0,
        corpus_dir: Path | None = None,
        verifier_key: str | None = None,
        expose_case_id: bool = False,
    ) -> None:
        """`corpus_dir` holds the cases' text (neither service serves it); by default the
        corpus committed with the repository, which must match the one the services load.
        `verifier_key` is the verifier's key when it has its own (CRMBENCH_VERIFIER_KEY);
        by default the admin key, which the verifier accepts unless it has its own.
        `expose_case_id` puts the case id in `info` (for debugging only: a policy trained
        with it can learn the answers by case)."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, not {max_steps}")
        self.crm_api_url = crm_api_url.rstrip("/")
        self.verifier_url = verifier_url.rstrip("/")
        self.max_steps = max_steps
        self.expose_case_id = expose_case_id
        self._cases = _corpus((corpus_dir or default_corpus_dir()).resolve())
        chosen = tuple(case_ids) if case_ids is not None else tuple(self._cases)
        unknown = [case_id for case_id in chosen if case_id not in self._cases]
        if not chosen or unknown:
            raise ValueError(
                f"case_ids must name cases of the corpus; unknown: {unknown[:10]}"
                if unknown
                else "case_ids is empty"
            )
        self.case_ids = chosen
        self._crm = SyncCrmApiClient(self.crm_api_url, admin_key, timeout=timeout)
        self._verifier = SyncVerifierClient(
            self.verifier_url, verifier_key or admin_key, timeout=timeout
        )
        self._episode: _Episode | None = None
        self._closed = False
        try:
            with _service_errors():
                self._tools: list[dict[str, Any]] = self._crm.tool_definitions("openai")
        except BaseException:
            self._close_clients()
            raise
        names = [tool["function"]["name"] for tool in self._tools]
        self.action_space = CrmActionSpace(names)
        self.observation_space = Text(OBSERVATION_MAX_LENGTH, min_length=0, charset=TEXT_CHARSET)

    @property
    def episode_id(self) -> str | None:
        """The live episode's id, or None between episodes."""
        episode = self._episode
        return episode.episode_id if episode is not None and not episode.dropped else None

    # ----------------------------------------------------------------------- Gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._ensure_open()
        case = self._pick_case(options or {})
        self._drop_episode()
        self._episode = None
        with _service_errors():
            opened = self._crm.open_episode(case.case_id)
        body = opened.body
        turns = [turn.content for turn in case.turns]
        self._episode = _Episode(
            episode_id=opened.episode_id,
            token=opened.token,
            case=case,
            transcript=[Message.user(text).model_dump(mode="json") for text in turns],
        )
        info = {
            "episode_id": body["episode_id"],
            **({"case_id": case.case_id} if self.expose_case_id else {}),
            "turns": turns,
            "today": body["today"],
            "actor": body["actor"],
            "tools": copy.deepcopy(self._tools),
        }
        return "\n\n".join(turns), info

    def step(
        self, action: str | Mapping[str, Any]
    ) -> tuple[str, float, bool, bool, dict[str, Any]]:
        episode = self._running_episode()
        parsed = parse_action(action)
        if isinstance(parsed, ReplyAction):
            record = self._finish(episode, parsed.text, "terminated")
            return "", float(record["score"]), True, False, record
        observation, info = self._call_tool(episode, parsed)
        if episode.tool_calls < self.max_steps:
            return observation, 0.0, False, False, info
        record = self._finish(episode, "", "truncated")
        return observation, float(record["score"]), False, True, {**info, **record}

    def close(self) -> None:
        """Drops the live episode, if any, and closes the HTTP client; safe to call twice."""
        if self._closed:
            return
        try:
            self._drop_episode()
        finally:
            self._closed = True
            self._close_clients()

    # ------------------------------------------------------------------- internals

    def _close_clients(self) -> None:
        try:
            self._crm.close()
        finally:
            self._verifier.close()

    def _ensure_open(self) -> None:
        if self._closed:
            raise EnvironmentClosed("the environment is closed; make a new one")

    def _pick_case(self, options: Mapping[str, Any]) -> Case:
        unknown_options = sorted(set(options) - {"case_id"})
        if unknown_options:
            raise ValueError(f"reset options take only 'case_id'; unknown: {unknown_options}")
        case_id = options.get("case_id")
        if case_id is None:
            case_id = self.case_ids[int(self.np_random.integers(len(self.case_ids)))]
        case = self._cases.get(case_id) if isinstance(case_id, str) else None
        if case is None:
            raise ValueError(f"options['case_id'] = {case_id!r} is not a case of the corpus")
        return case

    def _running_episode(self) -> _Episode:
        self._ensure_open()
        episode = self._episode
        if episode is None:
            raise EpisodeNotRunning("step() was called before reset(); call reset() first")
        if episode.ended is not None:
            raise EpisodeNotRunning(
                f"the episode {episode.episode_id} has {episode.ended}; "
                "call reset() to start another"
            )
        return episode

    def _call_tool(self, episode: _Episode, call: ToolCallAction) -> tuple[str, dict[str, Any]]:
        number = episode.tool_calls + 1
        call_id = f"step-{number}"
        try:
            with _service_errors():
                response = self._crm.call_tool(
                    episode.token, call.tool, call.arguments, tool_call_id=call_id
                )
            if not response.is_json:
                raise ServiceError(
                    "crm_api",
                    response.status,
                    client_errors.INVALID_RESPONSE,
                    f"POST /tools/{call.tool} did not answer JSON: {str(response.body)[:200]!r}",
                )
            # 401/403 mean the episode's token no longer works (expired, dropped): the
            # harness's fault, not a refusal the agent could learn from.
            if response.status in (401, 403) or not 200 <= response.status < 500:
                raise ServiceError.from_client(response.as_error())
        except ServiceError:
            # Whether the call committed is unknown, so the episode cannot go on.
            episode.ended = "failed on a CRM API error"
            raise
        episode.tool_calls = number
        observation = tool_result_content(response.status, response.body)
        episode.transcript += [
            Message.assistant(
                tool_calls=[ToolCall(id=call_id, name=call.tool, arguments=call.arguments)]
            ).model_dump(mode="json"),
            Message.tool(call_id, observation).model_dump(mode="json"),
        ]
        ok = response.status == 200
        error = response.body.get("error") if isinstance(response.body, dict) else None
        info = {
            "step": number,
            "tool": call.tool,
            "tool_call_id": call_id,
            "status": response.status,
            "ok": ok,
            "error_code": error.get("code") if not ok and isinstance(error, dict) else None,
            "latency_ms": round(response.latency_ms, 3),
        }
        return observation, info

    def _finish(self, episode: _Episode, reply: str, why: str) -> dict[str, Any]:
        """Scores the episode with `reply` as the final answer, then drops it."""
        episode.ended = "failed: the verifier could not score it"
        if reply:
            episode.transcript.append(Message.assistant(reply).model_dump(mode="json"))
        with _service_errors():
            verdict = self._verifier.verify(
                episode.case.case_id, episode.episode_id, reply, episode.transcript
            )
        record = verdict.model_dump(mode="json")
        if not self.expose_case_id:
            del record["case_id"]
        episode.ended = why
        self._drop_episode()
        return record

    def _drop_episode(self) -> None:
        episode = self._episode
        if episode is None or episode.dropped:
            return
        # False (404): the reaper dropped it already, which is what was wanted.
        with _service_errors():
            self._crm.close_episode(episode.episode_id)
        episode.dropped = True


def register_env() -> None:
    """Registers `crmbench/Crm-v0` with Gymnasium (idempotent), so that
    `gymnasium.make(ENV_ID, crm_api_url=..., verifier_url=..., admin_key=...)` works.

    Declared nondeterministic: episode ids, the ids of rows the agent creates and the
    latencies differ between runs of the same seed and actions.
    """
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID, entry_point="agent_runner.gym_env:CrmEnv", nondeterministic=True
        )
