"""Example generation: every example validates, the same seed gives the same examples, and
an LLM (a local HTTP server speaking OpenAI chat-completions) only contributes valid ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from skillq.engine.examples import ChatClient, ExampleStore, generate_examples
from skillq.engine.skills import Skill, SkillLibrary, Tool
from tests.support import ROOT, JsonHandler, serve_http

SHIPPED = SkillLibrary([ROOT / "skills"])

RICH_SCHEMA = {
    "type": "object",
    "required": ["name", "tags", "mode"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 20, "pattern": "^[a-z]+$"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "mode": {"enum": ["fast", "thorough"]},
        "ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "nested": {
            "type": "object",
            "properties": {"depth": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["depth"],
        },
    },
}


def rich_skill() -> Skill:
    tool = Tool("configure", "Configure a thing.", RICH_SCHEMA, ("true",), 5.0, "fast")
    return Skill("rich", "A skill with a demanding schema.", Path("."), {"configure": tool})


def all_valid(skill: Skill, examples: dict[str, list[dict]]) -> None:
    for tool_name, items in examples.items():
        validator = Draft202012Validator(skill.tools[tool_name].input_schema)
        for item in items:
            assert validator.is_valid(item["input"]), (tool_name, item)


def test_generated_examples_all_validate() -> None:
    skills = [*SHIPPED.all()[0], rich_skill()]
    for skill in skills:
        examples = generate_examples(skill, None, 8, seed=3)
        assert set(examples) == set(skill.tools)
        assert all(len(items) == 8 for items in examples.values()), skill.name
        all_valid(skill, examples)
        sources = {item["source"] for items in examples.values() for item in items}
        assert sources <= {"skill", "schema"}


def test_the_skill_authors_examples_come_first() -> None:
    skill = SHIPPED.find("primes")
    examples = generate_examples(skill, None, 4, seed=0)["count_primes"]
    assert [item["source"] for item in examples] == ["skill", "skill", "schema", "schema"]
    assert examples[0]["input"] == {"limit": 1000000}


def test_the_same_seed_gives_the_same_examples() -> None:
    skill = rich_skill()
    first = generate_examples(skill, ["configure"], 6, seed=42)
    assert generate_examples(skill, ["configure"], 6, seed=42) == first
    assert generate_examples(skill, ["configure"], 6, seed=43) != first


def test_examples_are_stored_with_the_skill(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path)
    skill = SHIPPED.find("text-stats")
    store.save("text-stats", generate_examples(skill, ["keywords"], 2, seed=1), 1)
    store.save("text-stats", generate_examples(skill, ["word_count"], 3, seed=2), 2)
    stored = store.load("text-stats")
    assert {tool: len(items) for tool, items in stored["tools"].items()} == {
        "keywords": 2,
        "word_count": 3,
    }
    assert stored["seed"] == 2


# --- the LLM: a local HTTP server speaking the OpenAI chat-completions format ---


class ChatHandler(JsonHandler):
    requests: list[dict] = []
    #: What the "model" answers: two valid examples, one invalid, one duplicate, in a fence.
    answer = {
        "examples": [
            {"name": "alpha", "tags": ["x"], "mode": "fast"},
            {"name": "NOT-LOWERCASE", "tags": ["x"], "mode": "fast"},
            {"name": "beta", "tags": ["y", "z"], "mode": "thorough", "ratio": 0.5},
            {"name": "alpha", "tags": ["x"], "mode": "fast"},
        ]
    }

    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions"
        body = self.read_json()
        self.requests.append(body)
        content = "Here you are:\n```json\n" + json.dumps(self.answer) + "\n```"
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }
        self.send_json(reply)


@pytest.fixture
def llm_url() -> Iterator[str]:
    ChatHandler.requests = []
    with serve_http(ChatHandler) as url:
        yield f"{url}/v1"


def test_llm_examples_are_kept_only_when_they_validate(llm_url: str) -> None:
    skill = rich_skill()
    llm = ChatClient(llm_url, "test-model", "sk-test", timeout_secs=10)
    examples = generate_examples(skill, None, 4, seed=7, llm=llm)["configure"]
    llm_inputs = [item["input"] for item in examples if item["source"] == "llm"]
    assert llm_inputs == [
        {"name": "alpha", "tags": ["x"], "mode": "fast"},
        {"name": "beta", "tags": ["y", "z"], "mode": "thorough", "ratio": 0.5},
    ]
    assert [item["source"] for item in examples] == ["llm", "llm", "schema", "schema"]
    all_valid(skill, {"configure": examples})
    request = ChatHandler.requests[0]
    assert request["model"] == "test-model"
    assert "configure" in request["messages"][-1]["content"]


def test_an_unreachable_llm_still_gives_schema_examples() -> None:
    llm = ChatClient("http://127.0.0.1:9", "m", None, timeout_secs=2)
    examples = generate_examples(rich_skill(), None, 3, seed=1, llm=llm)["configure"]
    assert [item["source"] for item in examples] == ["schema"] * 3
