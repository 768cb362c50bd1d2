"""An Ollama Modelfile for a built GGUF: FROM, the chat template in Ollama's Go-template syntax, stop tokens, SYSTEM.

A model's chat template is Jinja; Ollama's TEMPLATE is a Go template, and no library translates
one into the other (a template is a program). So the template is not translated but measured:
rendered with marker contents for a system, user and assistant turn and the generation prompt,
the text around each marker is that role's prefix and suffix. The Go template made of those
pieces is then checked the same way against a longer conversation; a template whose output is not
that simple shape (one that numbers turns, or moves the system prompt) fails the check, and the
Modelfile then leaves TEMPLATE out and says why: Ollama falls back on the GGUF's own
tokenizer.chat_template, which it matches against the templates it knows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kecil.errors import KecilError

ROLES = ("system", "user", "assistant")
_MARK = "\u2063KECIL{}\u2063"  # invisible separators: no real template writes them


@dataclass(frozen=True)
class Turns:
    """Each role's text before and after its content, and the generation prompt."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str

    def render(self, messages: list[dict]) -> str:
        """What the Go template below renders for `messages` (with the generation prompt)."""
        return "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages) + self.generation

    def go_template(self) -> str:
        def text(piece: str) -> str:  # a literal "{{" in the template's own text must not start an action
            return piece.replace("{{", '{{ "{{" }}')

        branches = "".join(
            ("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}{text(self.prefix[role])}{{{{ .Content }}}}{text(self.suffix[role])}'
            for i, role in enumerate(ROLES)
        )
        return "{{ range .Messages }}" + branches + "{{ end }}{{ end }}" + text(self.generation)


def measure_turns(template, adds_bos: bool = False) -> Turns | None:
    """The Turns of a kecil.infer.chat_template.ChatTemplate, or None when its output is not one
    prefix + content + suffix per message (checked on a longer conversation). `adds_bos`: the
    runtime adds the BOS token itself, so a template's own leading BOS is left out of the pieces."""

    def mark(i: int) -> str:
        return _MARK.format(i)

    def render(messages: list[dict], generation: bool) -> str:
        return template.render(messages, add_generation_prompt=generation)

    try:
        system = [{"role": "system", "content": mark(0)}]
        user = system + [{"role": "user", "content": mark(1)}]
        both = user + [{"role": "assistant", "content": mark(2)}]
        texts = [render(system, False), render(user, False), render(both, False)]
        generation_text = render(both + [{"role": "user", "content": mark(3)}], True)
        plain = render(both + [{"role": "user", "content": mark(3)}], False)
    except (KecilError, TypeError, ValueError):  # a template that cannot render here cannot be measured
        return None
    bos = (template.bos_token or "") if adds_bos else ""
    prefix, suffix = {}, {}
    previous = ""
    for role, i, text in zip(ROLES, range(3), texts):
        if not text.startswith(previous):
            return None
        added = text[len(previous):]
        if role == "system" and bos and added.startswith(bos):
            added = added[len(bos):]  # llama.cpp and Ollama add BOS themselves
        before, marker, after = added.partition(mark(i))
        if not marker:
            return None
        prefix[role], suffix[role] = before, after
        previous = text
    if not generation_text.startswith(plain):
        return None
    turns = Turns(prefix, suffix, generation_text[len(plain):])
    # the check: a conversation the pieces were not measured on renders the same both ways
    check = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"},
             {"role": "assistant", "content": "Because."}, {"role": "user", "content": "Ok"}]
    try:
        expected = template.render(check, add_generation_prompt=True)
    except (KecilError, TypeError, ValueError):
        return None
    if expected.startswith(bos) and bos:
        expected = expected[len(bos):]
    return turns if expected == turns.render(check) else None


def stop_tokens(turns: Turns | None, eos: str | None) -> list[str]:
    """The end-of-sequence token and the end of an assistant turn (e.g. <|im_end|>), each once."""
    stops = [eos] if eos else []
    if turns is not None:
        end = turns.suffix["assistant"].strip()
        if end and end not in stops:
            stops.append(end)
    return stops


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def write_modelfile(folder: Path, gguf_name: str, system: str | None) -> list[str]:
    """Write folder/Modelfile for folder/gguf_name; returns notes for the model card (e.g. no TEMPLATE)."""
    from kecil.infer.chat_template import ChatTemplate
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    info = inspect_model(resolve(str(folder / gguf_name)))
    notes = []
    turns = None
    if info.chat_template:
        turns = measure_turns(ChatTemplate(info.chat_template, info.bos_token, info.eos_token), info.add_bos)
    lines = ["# Made by `kecil build`: `ollama create NAME -f Modelfile` in this folder.", f"FROM ./{gguf_name}", ""]
    if turns is not None:
        lines += [f"TEMPLATE {_quote(turns.go_template())}", ""]
    else:
        why = ("the model has no chat template" if not info.chat_template
               else "its chat template is not a plain prefix-content-suffix per turn")
        notes.append(f"the Modelfile has no TEMPLATE ({why}): Ollama reads the GGUF's own chat template")
        lines += [f"# No TEMPLATE: {why}; Ollama uses the GGUF's own tokenizer.chat_template.", ""]
    for stop in stop_tokens(turns, info.eos_token):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    lines.append("PARAMETER temperature 0")
    if system:
        lines += ["", f"SYSTEM {_quote(system)}"]
    (folder / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return notes
