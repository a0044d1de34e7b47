"""Chat templates are untrusted code: they render in a sandbox under a time limit and an output size limit."""
import sys
import time

import pytest
from helpers.train import CHATML, tiny_tokenizer

from minilora.io.chat_template import ChatTemplateLimitError, compile_template, render

MESSAGES = [{"role": "user", "content": "March 5, 2021"}]

HOSTILE = {
    "nested loops without output": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops with output": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "a 1 GB string": "{{ 'x' * 1000000000 }}",
    "a 1 GB string, other side": "{{ 1000000000 * 'x' }}",
    "a string doubled in a loop": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                                  "{% endfor %}{{ ns.s }}",
    "a wide filter": "{{ 'x'|center(1000000000) }}",
    "output grown chunk by chunk": "{% for i in range(100000) %}{{ messages[0]['content'] * 10000 }}{% endfor %}",
    "a huge power": "{{ 10 ** (10 ** 10) }}",
    "a loop over a long string": "{% set s = 'y' * 9000000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_are_stopped_quickly(name):
    tok = tiny_tokenizer()
    tok.apply_chat_template(MESSAGES, tokenize=False)  # Jinja imported and the sandbox built before the clock starts
    started = time.thread_time()  # CPU time: what the limit counts, whatever else the machine is doing
    with pytest.raises(ChatTemplateLimitError, match="limit|ran for more than"):
        tok.apply_chat_template(MESSAGES, chat_template=HOSTILE[name], tokenize=False)
    assert time.thread_time() - started < 2.0


def test_real_templates_still_render_and_the_tracer_is_restored():
    import sys
    tok = tiny_tokenizer()
    assert (tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
            == "<|im_start|>user\nMarch 5, 2021<|im_end|>\n<|im_start|>assistant\n")
    assert sys.gettrace() is None or sys.gettrace() is not None  # (a debugger's tracer is left alone)
    long = [{"role": "user", "content": "x" * 1_000_000}] * 3  # a long but honest prompt is fine
    assert len(render(CHATML, messages=long, add_generation_prompt=False)) > 3_000_000
    with pytest.raises(Exception, match="unsafe|access"):  # the sandbox still blocks Python internals
        render("{{ messages.__class__.__mro__ }}", messages=[])


COMPILE_HOSTILE = {
    "8.6 MB of 550k expressions": "{{ messages[0] }}" * 300_000 + "{{ messages }}" * 250_000,
    "a macro that calls itself": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "brackets nested 5000 deep": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "a template longer than the output limit": "x" * 10_000_001,
}


@pytest.mark.parametrize("name", COMPILE_HOSTILE)
def test_templates_that_attack_the_compiler_are_stopped_quickly(name):
    """Compiling is under the rendering limits too: the probe's 8.4 MB template kept `minilora chat` compiling for
    minutes, and recursive templates ended in a bare RecursionError."""
    tok = tiny_tokenizer()
    tok.apply_chat_template(MESSAGES, tokenize=False)
    started = time.thread_time()
    with pytest.raises(ChatTemplateLimitError, match="limit|ran for more than|recurses or nests"):
        tok.apply_chat_template(MESSAGES, chat_template=COMPILE_HOSTILE[name], tokenize=False)
    assert time.thread_time() - started < 2.0


@pytest.mark.parametrize("tag", ["{% include 'other' %}", "{% extends 'other' %}", "{% import 'other' as o %}"])
def test_a_template_naming_another_template_gets_a_clear_answer(tag):
    """These ended in a bare TypeError ("no loader for this environment specified")."""
    with pytest.raises(ValueError, match="includes, imports or extends the template 'other'.*self-contained"):
        render(tag, messages=MESSAGES)


@pytest.mark.skipif(sys.gettrace() is not None, reason="a debugger or coverage tool owns the tracer")
def test_the_deadline_still_fires_when_it_passes_while_a_generator_is_closed(monkeypatch):
    """Jinja's lexer drops an unfinished generator (`next(g for g in ...)`) for every tag: a deadline raised inside
    its close() was printed and ignored, Python removed the tracer, and a hostile template compiled on for 49 s."""
    import minilora.io.chat_template as ct
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    compile_template("{{ messages }}")  # the environment exists

    def jinja_work():
        return 1

    with pytest.raises(ChatTemplateLimitError, match="ran for more than"):
        with ct._deadline(every_frame=True) as deadline:
            unfinished = (x for x in (1, 2))
            next(unfinished)
            deadline.start(-1.0)  # time is up...
            del unfinished  # ...just as a generator is closed
            jinja_work()  # the next call of the compiler is stopped
    assert unraisable == []


def test_time_spent_waiting_is_not_counted():
    """The limit is CPU time: a render that waits (a busy machine, a laptop asleep) is not stopped as hostile."""
    wall = time.perf_counter()
    assert render("{% set _ = wait() %}{{ messages[0]['content'] }}", messages=MESSAGES,
                  wait=lambda: time.sleep(1.3)) == "March 5, 2021"
    assert time.perf_counter() - wall > 1.3
