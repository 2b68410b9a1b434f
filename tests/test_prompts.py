"""Prompt templates: plain and chat ask for a boxed answer, raw is the problem text itself."""

import pytest

from rsgrpo.prepare.prompts import BOXED_INSTRUCTION, build_prompt


class FakeChatTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt is True and tokenize is False
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + "<|assistant|>"


def test_build_prompt_templates():
    plain = build_prompt("What is 3 + 4?", template="plain")
    assert plain.startswith("What is 3 + 4?") and plain.endswith("\\boxed{}.")
    assert build_prompt("Q", template="plain", system="Be brief.").startswith("Be brief.\n\nQ")
    chat = build_prompt("What is 3 + 4?", tokenizer=FakeChatTokenizer(), system="S")
    assert chat == ("<|system|>S<|end|><|user|>What is 3 + 4?\n\n" + BOXED_INSTRUCTION
                    + "<|end|><|assistant|>")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt("Q", template="chat")
    with pytest.raises(ValueError, match="unknown prompt template 'fancy'"):
        build_prompt("Q", template="fancy")


def test_raw_template_is_the_problem_text_itself():
    from rsgrpo.train.config import from_dict

    assert build_prompt("37+45=", template="raw") == "37+45="
    with pytest.raises(ValueError, match="takes no system prompt"):
        build_prompt("37+45=", template="raw", system="be brief")
    assert from_dict({"prompt_template": "raw"}).prompt_template == "raw"
    # that the workflow schema offers exactly the templates build_prompt knows: tests/test_schema_enums.py


def test_every_listed_template_renders_a_problem():
    from rsgrpo.prepare.prompts import PROMPT_TEMPLATES

    for template in PROMPT_TEMPLATES:
        assert "7+8" in build_prompt("7+8", template=template, tokenizer=FakeChatTokenizer()), template
