"""The judge page (judge.py gathers what it shows): the questions as HTML, and the inline style and
script that record the marks.

The marks are kept per page and per judge name, so that two people in one browser never see or
export each other's: localStorage's ``vqa-grpo-judge:<page id>`` holds ``{"judge": the name last
entered}`` and ``vqa-grpo-judge:<page id>:judge:<name>`` that judge's ``{"marks":
{'["<question id>","<slot>"]': {"label", "time"}}, "focus": the key of the answer last in focus}``.
Nothing is marked before a name is entered; another name shows that person's own marks; a reload
keeps every mark and returns to the answer last in focus (else the first not judged). A held
key marks once (repeats are ignored). Export writes one JSON line per mark of the judge named, in
page order: {"page", "mode", "question", "slot", "label", "judge", "time"}: grade mode's label is
right, partly or wrong for that slot's answer; pairwise mode's slot is null and its label A, B or
tie. ``time`` is when the mark was made (ISO
8601, UTC); ``judge`` is the name in the Judge field at export.
"""

from __future__ import annotations

from vqa_grpo.evaluation.report_html import escape_html, image_tags

MODES = ("grade", "pairwise")
DEFAULT_N = 60
"""Questions on a page unless told (``vqa-grpo judge --n``, ``judge.write_judge(n=...)``)."""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
GRADE = (("right", "1"), ("partly", "2"), ("wrong", "3"))
PAIRWISE = (("A", "a", "A is better"), ("tie", "t", "tie"), ("B", "b", "B is better"))


def _item_grade(item: dict, slot: dict) -> str:
    buttons = "".join(
        f'<button type=button data-label="{label}" aria-pressed=false>{label} <kbd>{key}</kbd></button>'
        for label, key in GRADE
    )
    return (
        f'<li class=item tabindex=-1 data-q="{escape_html(item["id"])}" data-slot="{escape_html(slot["slot"])}">'
        f"<span class=slot>{escape_html(slot['slot'])}</span><span class=answer>{escape_html(slot['answer'])}</span>"
        f"<span class=marks>{buttons}</span></li>"
    )


def _item_pairwise(item: dict) -> str:
    answers = "".join(
        f"<div class=side><span class=slot>{escape_html(s['slot'])}</span>"
        f"<span class=answer>{escape_html(s['answer'])}</span></div>"
        for s in item["slots"]
    )
    buttons = "".join(
        f'<button type=button data-label="{label}" aria-pressed=false>{text} <kbd>{key}</kbd></button>'
        for label, key, text in PAIRWISE
    )
    return (
        f'<div class="item pair" tabindex=-1 data-q="{escape_html(item["id"])}" data-slot="">'
        f"<div class=sides>{answers}</div><div class=marks>{buttons}</div></div>"
    )


def _question(number: int, total: int, item: dict, images: list[str], mode: str) -> str:
    img = image_tags(images, f"image of question {number}") or "<p class=note>no image</p>"
    kinds = " \u00b7 ".join(escape_html(t) for t in (item["question_type"], item["answer_type"]) if t)
    if mode == "grade":
        body = "<ol class=answers>" + "".join(_item_grade(item, s) for s in item["slots"]) + "</ol>"
    else:
        body = _item_pairwise(item)
    return (
        f'<section class=question id="q{number}"><div class=figure>{img}</div><div class=text>'
        f"<p class=count>{number} / {total} <span class=note>{kinds}</span></p>"
        f"<p class=asked>{escape_html(item['question'])}</p>"
        f"<p class=refs>Reference answers: {escape_html(item['answers'])}</p>{body}</div></section>"
    )


def judge_page(items: list[dict], thumbs: dict[str, list[str]], pid: str, mode: str, notes: list[str]) -> str:
    """The whole page: header (instructions, judge name, progress, Export), then the questions."""
    questions = "\n".join(
        _question(i, len(items), it, thumbs.get(it["id"]) or [], mode) for i, it in enumerate(items, 1)
    )
    if mode == "grade":
        task = (
            "Mark each answer <b>right</b>, <b>partly</b> right or <b>wrong</b> for its question and image. "
            "The reference answers are what annotators said; an answer that means the same is right. "
            "The models are not named and their order changes from question to question. "
            "The same answer from several models is shown once."
        )
        keys = "<kbd>1</kbd> right, <kbd>2</kbd> partly, <kbd>3</kbd> wrong (on the answer in focus, then the next)"
    else:
        task = (
            "Pick the better of the two answers, A or B, for the question and image, or <b>tie</b> when "
            "neither is better. The models are not named and their order changes from question to question."
        )
        keys = "<kbd>a</kbd> A is better, <kbd>b</kbd> B is better, <kbd>t</kbd> tie (then the next question)"
    note_html = "".join(f"<p class=note>{escape_html(n)}</p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>vqa-grpo judge: page {pid}</title>
<style>{_STYLE}</style>
</head>
<body>
<main id=judge data-page="{pid}" data-mode="{mode}">
<header>
<h1>vqa-grpo judge <span class=note>page {pid}</span></h1>
<p>{task}</p>
<p>Keys: {keys}; <kbd>j</kbd> or <kbd>\u2193</kbd> next, <kbd>k</kbd> or <kbd>\u2191</kbd> previous,
<kbd>n</kbd> next not judged. A click on a button marks too. Enter your name first: marks are
kept in this browser (localStorage) for this page and this name, so a reload loses nothing and
another name shows that person's own marks, not yours. Export saves yours as a JSONL file for
<code>vqa-grpo agreement</code>.</p>
{note_html}
</header>
<p class=bar><label>Judge <input id=judge-name type=text autocomplete=off placeholder="your name"></label>
<span id=progress>0 / 0 judged</span>
<button type=button id=export>Export JSONL</button> <span id=status role=status></span></p>
{questions}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1000px; color: #222; padding: 0 1em 40vh; }
.bar { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 0.4em 0; z-index: 1; }
h1 { font-size: 1.3em; } kbd { border: 1px solid #bbb; border-radius: 3px; padding: 0 0.3em; font-size: 0.85em; }
.bar { margin: 0; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; } #progress { font-weight: bold; }
.question { display: flex; gap: 1em; border-bottom: 1px solid #eee; padding: 1em 0; }
.text { flex: 1; min-width: 0; } .figure img { width: 240px; height: auto; border: 1px solid #eee; }
.asked { font-size: 1.15em; font-weight: bold; } .refs, .note { color: #666; }
.answers { list-style: none; padding: 0; }
.item { display: grid; grid-template-columns: 2.5em minmax(0, 1fr) auto; gap: 0.8em; align-items: center;
  padding: 0.3em 0.5em; border: 2px solid transparent; }
.item.current { border-color: #1565c0; background: #f3f8ff; } .item.done .answer { color: #555; }
.pair { grid-template-columns: minmax(0, 1fr); } .sides { display: grid; grid-template-columns: 1fr 1fr; gap: 2em; }
.side { display: flex; align-items: center; min-width: 0; }
.slot { font-weight: bold; color: #1565c0; margin-right: 0.5em; } .answer { overflow-wrap: anywhere; }
button[aria-pressed=true] { font-weight: bold; background: #1565c0; color: #fff; }
"""

# Plain ES5; every mark is saved at once.
_SCRIPT = """
(function () {
  "use strict";
  var root = document.getElementById("judge");
  var page = root.getAttribute("data-page"), mode = root.getAttribute("data-mode");
  var rootKey = "vqa-grpo-judge:" + page;
  var items = Array.prototype.slice.call(document.querySelectorAll(".item"));
  var nameField = document.getElementById("judge-name");
  var statusLine = document.getElementById("status");
  var keys = mode === "grade" ? {"1": "right", "2": "partly", "3": "wrong"} : {"a": "A", "b": "B", "t": "tie"};
  var judge = "", state = {marks: {}, focus: null}, current = 0;

  function read(key) {
    try {
      var value = JSON.parse(window.localStorage.getItem(key) || "null");
      return value && typeof value === "object" ? value : null;
    } catch (err) { return null; }  // unreadable: start afresh
  }
  function write(key, value) {
    try { window.localStorage.setItem(key, JSON.stringify(value)); }
    catch (err) { say("this browser would not keep the marks (" + err.name + "): export them now"); }
  }
  function judgeKey(name) { return rootKey + ":judge:" + name; }
  function loadJudge(name) {
    var saved = name ? read(judgeKey(name)) : null;
    var marks = saved && typeof saved.marks === "object" && saved.marks !== null ? saved.marks : {};
    return {marks: marks, focus: saved && typeof saved.focus === "string" ? saved.focus : null};
  }
  function save() { if (judge) { write(judgeKey(judge), state); } }
  function say(text) { statusLine.textContent = text; }
  function keyOf(item) { return JSON.stringify([item.getAttribute("data-q"), item.getAttribute("data-slot")]); }
  function show(item) {
    var mark = state.marks[keyOf(item)];
    item.classList.toggle("done", !!mark);
    Array.prototype.forEach.call(item.querySelectorAll("button[data-label]"), function (b) {
      b.setAttribute("aria-pressed", String(!!mark && mark.label === b.getAttribute("data-label")));
    });
  }
  function progress() {
    var done = items.filter(function (item) { return state.marks[keyOf(item)]; }).length;
    document.getElementById("progress").textContent = done + " / " + items.length + " judged";
  }
  function focusItem(i, scroll, take) {
    if (!items.length) { return; }
    current = Math.max(0, Math.min(items.length - 1, i));
    items.forEach(function (item, j) { item.classList.toggle("current", j === current); });
    if (take !== false) { items[current].focus({preventScroll: true}); }
    if (scroll) { items[current].scrollIntoView({block: "center"}); }
    if (state.focus !== keyOf(items[current])) { state.focus = keyOf(items[current]); save(); }
  }
  function firstOpen() {
    for (var j = 0; j < items.length; j++) { if (!state.marks[keyOf(items[j])]) { return j; } }
    return 0;
  }
  function startAt() {  // where this judge was, else the first answer not judged
    for (var j = 0; j < items.length; j++) { if (keyOf(items[j]) === state.focus) { return j; } }
    return firstOpen();
  }
  function switchTo(value, take) {  // each name has its own marks
    judge = value.trim();
    state = loadJudge(judge);
    write(rootKey, {judge: value});
    items.forEach(show); progress();
    focusItem(startAt(), state.focus !== null, take);  // scrolled to only where this judge was
  }
  function mark(i, label) {
    if (!judge) {
      say("enter your name in the Judge field first: the marks are kept per name");
      nameField.focus();
      return false;
    }
    state.marks[keyOf(items[i])] = {label: label, time: new Date().toISOString()};
    save(); show(items[i]); progress();
    return true;
  }
  function nextOpen() {
    for (var step = 1; step <= items.length; step++) {
      var j = (current + step) % items.length;
      if (!state.marks[keyOf(items[j])]) { return j; }
    }
    return current;
  }
  function exportMarks() {
    if (!judge) { say("enter your name in the Judge field first"); nameField.focus(); return; }
    var lines = [];
    items.forEach(function (item) {
      var m = state.marks[keyOf(item)];
      if (!m) { return; }
      var slot = item.getAttribute("data-slot");
      lines.push(JSON.stringify({page: page, mode: mode, question: item.getAttribute("data-q"),
        slot: slot === "" ? null : slot, label: m.label, judge: judge, time: m.time}));
    });
    if (!lines.length) { say("nothing judged yet"); return; }
    var url = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {type: "application/x-ndjson"}));
    var link = document.createElement("a");
    link.href = url;
    link.download = "judgments-" + page + "-" + judge.replace(/[^A-Za-z0-9_-]+/g, "_") + ".jsonl";
    document.body.appendChild(link);
    link.click();
    document.body.removeChild(link);
    window.setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    say("exported " + lines.length + " judgments");
  }

  items.forEach(function (item, i) {
    item.addEventListener("click", function (event) {
      var button = event.target.closest ? event.target.closest("button[data-label]") : null;
      if (button && !mark(i, button.getAttribute("data-label"))) { return; }
      focusItem(i, false);
    });
  });
  nameField.addEventListener("input", function () { switchTo(nameField.value, false); });
  document.getElementById("export").addEventListener("click", exportMarks);
  document.addEventListener("keydown", function (event) {
    if (event.target === nameField || event.ctrlKey || event.metaKey || event.altKey) { return; }
    var k = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (keys.hasOwnProperty(k)) {
      if (!event.repeat && mark(current, keys[k])) { focusItem(current + 1, true); }  // a held key marks once
    }
    else if (k === "j" || k === "ArrowDown") { focusItem(current + 1, true); }
    else if (k === "k" || k === "ArrowUp") { focusItem(current - 1, true); }
    else if (k === "n") { focusItem(nextOpen(), true); }
    else { return; }
    event.preventDefault();
  });
  var saved = read(rootKey) || {};
  var name = typeof saved.judge === "string" ? saved.judge : "";
  if (saved.marks && name.trim() && !read(judgeKey(name.trim()))) {  // kept by an earlier page: one judge's
    write(judgeKey(name.trim()), {marks: saved.marks, focus: null});
  }
  nameField.value = name;
  switchTo(name, true);
})();
"""
