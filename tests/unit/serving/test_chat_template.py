"""ChatTemplate: the model's own Jinja template, rendered sandboxed."""

from __future__ import annotations

import pytest

from modelmint.errors import InvalidRequest
from modelmint.serving.chat_template import ChatTemplate, message_text

# The chat template stored in SmolLM2-135M-Instruct's GGUF metadata (ChatML with a
# default system prompt).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_smollm2_template_adds_the_default_system_prompt() -> None:
    prompt = ChatTemplate(SMOLLM2_TEMPLATE).render([{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_keeps_a_given_system_prompt() -> None:
    prompt = ChatTemplate(SMOLLM2_TEMPLATE).render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_list_of_text_parts_is_joined_into_the_content() -> None:
    messages = [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
    ]
    assert ChatTemplate(SMOLLM2_TEMPLATE).render(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_missing_content_renders_as_empty_text() -> None:
    assert message_text({"role": "assistant", "content": None}) == ""
    assert message_text({"role": "assistant"}) == ""


def test_bos_and_eos_tokens_reach_the_template() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render([{"role": "user", "content": "a"}]) == "<s>a</s>"


def test_image_part_is_an_invalid_request() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    with pytest.raises(InvalidRequest) as caught:
        ChatTemplate(SMOLLM2_TEMPLATE).render(messages)
    assert caught.value.param == "messages"
    assert caught.value.message == "content part of type 'image_url' is not supported by this model"


def test_template_calling_raise_exception_is_an_invalid_request() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversations must start with a user message') }}"
        "{% endif %}ok"
    )
    assert template.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(InvalidRequest) as caught:
        template.render([{"role": "assistant", "content": "x"}])
    assert caught.value.status_code == 400
    assert caught.value.message == (
        "chat template refused the messages: Conversations must start with a user message"
    )


def test_template_failing_at_render_time_is_an_invalid_request() -> None:
    template = ChatTemplate("{{ messages[0]['content'].nope.deeper }}")
    with pytest.raises(InvalidRequest, match="cannot apply the chat template"):
        template.render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        # Classic escapes from a Jinja expression to Python internals.
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception.__globals__['__builtins__'] }}",
        "{{ cycler.__init__.__globals__.os }}",
        # The environment is immutable: templates cannot change what they were given.
        "{{ messages.append({'role': 'system', 'content': 'pwned'}) }}",
        "{{ messages[0].update({'content': 'pwned'}) }}",
    ],
)
def test_sandbox_blocks_attribute_access_tricks(source: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot apply the chat template"):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


def test_sandbox_renders_unsafe_attributes_as_nothing() -> None:
    # A lone unsafe attribute is an undefined value: it prints as empty, exposing nothing.
    assert ChatTemplate("[{{ ''.__class__ }}]").render([]) == "[]"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 1 + messages[0]['content'] }}",  # TypeError inside the template
        "{{ (messages | length) // 0 }}",  # ZeroDivisionError
        "{{ range(10 ** 9) | list }}",  # the sandbox's range limit (OverflowError)
    ],
)
def test_python_errors_inside_the_template_are_invalid_requests(source: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot apply the chat template"):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
