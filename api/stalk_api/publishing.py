"""Publishing recorded tasks to Redis: the messages ``send_task`` would send, for a fraction of its CPU.

Celery spends ~50 µs of CPU building and pushing one message (routing, ``saferepr`` of the
arguments, two JSON encodings, base64, kombu's bookkeeping, one LPUSH): most of what a batch of
1,000 submissions cost. Tasks of one kind (task name, queue, priority, not scheduled) differ only
in a few fields of that message: the task id (also its root id and correlation id), kombu's
delivery tag, and the arguments (the body, and their repr in ``argsrepr``/``kwargsrepr``). So:

1. the first task of each kind in a call goes through Celery's own path
   (``amqp.create_task_message``, ``amqp.send_task_message``, kombu's producer and channel) and is
   captured just before it would be pushed (``stalk_workers.transport.Channel.capturing``);
2. that message becomes a ``Template``: its JSON text with those fields cut out. A template is
   kept only if it renders the captured message back character for character; otherwise every
   task of that kind takes Celery's path;
3. all messages go to Redis in one pipeline, one LPUSH per list, in submission order.

Scheduled tasks (eta), arguments a template cannot render, and every task while anything listens
to Celery's publish signals (``before_task_publish`` may add headers, e.g. tracing), take Celery's
path one by one (still captured, so they share the pipeline). tests/api/test_publishing.py compares the messages with
``send_task``'s for generated arguments, and checks that a worker runs them.

Capturing reads kombu's private ``_put``/``_q_for_pri`` and ``flat_saferepr`` copies Celery's
``saferepr`` text, so each can be turned off (STALK_LIBRARY_SHORTCUTS_OFF): ``message-templates``
off sends every message through Celery, ``flat-saferepr`` off writes every repr with ``saferepr``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery, signals
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps as kombu_dumps

from stalk_api.ids import uuid4_strings
from stalk_workers.sent_at import SENT_AT_HEADER, is_stamp
from stalk_workers.transport import NotCapturable

_json = json.dumps  # what kombu's dumps writes for JSON values (it only adds encoders for other types)
_json_str = json.encoder.encode_basestring_ascii  # json.dumps(a str), without making an encoder per call


def publish(celery: Celery, rows: Iterable[dict], *, sent_at: float) -> None:
    """Send every row (``task_id``, ``task_name``, ``queue``, ``args``, ``kwargs``, ``eta``, ``priority``)
    in one Redis pipeline. Raises if Redis cannot take them; nothing is retried."""
    rows = list(rows)
    settings = celery.conf.stalk_settings
    with celery.producer_or_acquire() as producer:
        channel = producer.channel
        if hasattr(channel, "capturing") and settings.shortcut("message-templates"):
            try:
                lists = _render(celery, producer, rows, sent_at)
            except NotCapturable:
                pass
            else:
                with channel.conn_or_acquire() as client:
                    pipe = client.pipeline(transaction=False)
                    for key, payloads in lists.items():
                        pipe.lpush(key, *payloads)  # pushed in order: BRPOP takes the first one first
                    pipe.execute()
                return
        # Another transport (kombu's own: shortcuts off), a queue with an expiry, or templates off:
        # Celery sends each message.
        routes: dict[tuple, dict] = {}
        with producer.batch():
            for row in rows:
                _send(celery, producer, row, _options(celery, producer, row, routes), sent_at)


def _changes_messages() -> bool:
    """Whether a publish receiver may change each message (headers, properties): then every one is
    Celery's own. stalk's send-time stamp (a team's app may install it) sets only the header this
    module sets itself."""
    return (signals.after_task_publish.has_listeners()
            or any(not is_stamp(key) for key, _ in signals.before_task_publish.receivers))


def _render(celery: Celery, producer, rows: list[dict], sent_at: float) -> dict[str, list[str]]:
    """The payloads for every row, by Redis list, in order."""
    lists: dict[str, list[str]] = {}
    kinds: dict[tuple, _Kind] = {}
    routes: dict[tuple, dict] = {}
    templates = not _changes_messages()
    flat_reprs = celery.conf.stalk_settings.shortcut("flat-saferepr")
    for row, tag in zip(rows, uuid4_strings(len(rows)), strict=True):
        kind_key = (row["task_name"], row["queue"], row["priority"])
        kind = kinds.get(kind_key)
        if kind is None:
            kind = kinds[kind_key] = _Kind()
        if row["eta"] is None and kind.template is not None:
            payload = kind.template.render(row, tag)
            if payload is not None:
                lists.setdefault(kind.template.list_key, []).append(payload)
                continue
        with producer.channel.capturing() as captured:
            _send(celery, producer, row, _options(celery, producer, row, routes), sent_at)
        (list_key, message), = captured
        payload = kombu_dumps(message)  # what kombu's _put pushes
        if templates and row["eta"] is None and not kind.tried:
            kind.tried = True
            kind.template = Template.from_message(celery, list_key, message, payload, row, flat_reprs=flat_reprs)
        lists.setdefault(list_key, []).append(payload)
    return lists


class _Kind:
    tried = False
    template: Template | None = None


def _send(celery: Celery, producer, row: dict, options: dict, sent_at: float) -> None:
    message = celery.amqp.create_task_message(
        row["task_id"], row["task_name"], row["args"], row["kwargs"], eta=row["eta"],
        reply_to=celery.thread_oid,  # what send_task sets; per thread, like send_task's
        ignore_result=None,
    )
    celery.amqp.send_task_message(producer, row["task_name"], message, headers={SENT_AT_HEADER: sent_at}, **options)


def _options(celery: Celery, producer, row: dict, routes: dict[tuple, dict]) -> dict:
    """send_task's options for this kind of task: routed, its queue declared once, no retry."""
    key = (row["task_name"], row["queue"], row["priority"])
    options = routes.get(key)
    if options is None:
        options = celery.amqp.router.route({"queue": row["queue"], "priority": row["priority"]}, row["task_name"],
                                           row["args"], row["kwargs"])
        producer.maybe_declare(options["queue"])
        # declare=[]: declared just above, instead of kombu copying the queue to check it every task.
        options = routes[key] = {**options, "retry": False, "declare": []}
    return options


# Template ---------------------------------------------------------------------------------------

_FIELD = "\x00stalk:{}\x00"  # stands in for a per-task value while the template's text is made
_FIELD_IN_JSON = re.compile(r'"\\u0000stalk:(\w+)\\u0000"')


@dataclass(frozen=True)
class Template:
    """One kind of task's wire message with the per-task fields cut out of its JSON text."""

    list_key: str
    literals: tuple[str, ...]  # the text around the fields: len(fields) + 1 pieces
    fields: tuple[str, ...]  # "id", "tag", "argsrepr", "kwargsrepr" or "body", in text order
    embed: str  # the body's third element (callbacks, errbacks, chain, chord), as JSON
    repr_maxsize: tuple[int, int]
    repr_maxlevels: int
    flat_reprs: bool  # flat arguments' reprs by flat_saferepr; False: saferepr for every one

    @classmethod
    def from_message(cls, celery: Celery, list_key: str, message: dict, payload: str, row: dict, *,
                     flat_reprs: bool) -> Template | None:
        """The template of ``row``'s kind, from the message Celery built for it; None if it cannot be one."""
        headers, properties = message["headers"], message["properties"]
        task_id = row["task_id"]
        if not (headers.get("id") == headers.get("root_id") == properties.get("correlation_id") == task_id):
            return None
        if (message.get("content-type"), properties.get("body_encoding")) != ("application/json", "base64"):
            return None
        if any(headers.get(name) is not None for name in ("eta", "expires", "parent_id", "group")):
            return None  # per-task times (a task's default expiry) or a workflow: not one kind
        body = base64.b64decode(message["body"]).decode()
        head = _body_head(row)
        if head is None or not body.startswith(head) or not body.endswith("]"):
            return None
        shaped = {
            **message,
            "body": _FIELD.format("body"),
            "headers": {**headers, "id": _FIELD.format("id"), "root_id": _FIELD.format("id"),
                        "argsrepr": _FIELD.format("argsrepr"), "kwargsrepr": _FIELD.format("kwargsrepr")},
            "properties": {**properties, "correlation_id": _FIELD.format("id"), "delivery_tag": _FIELD.format("tag")},
        }
        pieces = _FIELD_IN_JSON.split(kombu_dumps(shaped))
        amqp = celery.amqp
        template = cls(list_key=list_key, literals=tuple(pieces[0::2]), fields=tuple(pieces[1::2]),
                       embed=body[len(head):-1], repr_maxsize=(amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize),
                       repr_maxlevels=celery.conf.task_repr_maxlevels, flat_reprs=flat_reprs)
        # Only a template that gives back exactly what Celery and kombu wrote is used.
        return template if template.render(row, properties["delivery_tag"]) == payload else None

    def render(self, row: dict, tag: str) -> str | None:
        """The payload for one task of this kind; None if its arguments need Celery's path."""
        head = _body_head(row)
        if head is None:
            return None
        args, kwargs = row["args"] or (), row["kwargs"] or {}  # as Celery's as_task_v2 takes them
        (args_max, kwargs_max), levels = self.repr_maxsize, self.repr_maxlevels
        flat = self.flat_reprs
        args_repr = (flat and flat_saferepr(args, args_max)) or saferepr(args, args_max, maxlevels=levels)
        kwargs_repr = (flat and flat_saferepr(kwargs, kwargs_max)) or saferepr(kwargs, kwargs_max, maxlevels=levels)
        values = {
            "id": _json_str(row["task_id"]),
            "tag": _json_str(tag),
            "argsrepr": _json_str(args_repr),
            "kwargsrepr": _json_str(kwargs_repr),
            "body": f'"{base64.b64encode(f"{head}{self.embed}]".encode()).decode()}"',
        }
        literals = self.literals
        out = [literals[0]]
        for field, literal in zip(self.fields, literals[1:]):
            out.append(values[field])
            out.append(literal)
        return "".join(out)


def _body_head(row: dict) -> str | None:
    """``[args, kwargs, `` as kombu's JSON writes the body; None for values JSON cannot take."""
    try:
        both = _json([row["args"] or [], row["kwargs"] or {}])  # "[args, kwargs]"
    except (TypeError, ValueError):
        return None
    return f"{both[:-1]}, "


_NUMBERS_AND_NONE = frozenset({int, float, bool, type(None)})


def flat_saferepr(value: list | tuple | dict, maxlen: int) -> str | None:
    """Celery's ``saferepr(value, maxlen)`` for a list or tuple of scalars or a dict of scalars, in a
    fraction of its time; None for anything else (nested values, or text it would truncate).

    saferepr quotes every string with ' and escapes only ' (not newlines), and writes numbers with
    ``str``. Output shorter than ``maxlen`` is never truncated, so the result is exact.
    """
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if type(key) is not str:
                return None
            text = _flat_scalar(item)
            if text is None:
                return None
            items.append(f"{_quoted(key)}: {text}")
        out = "{" + ", ".join(items) + "}"
    else:
        items = []
        for item in value:
            text = _flat_scalar(item)
            if text is None:
                return None
            items.append(text)
        if type(value) is tuple:
            out = "(" + ", ".join(items) + (",)" if len(items) == 1 else ")")
        elif type(value) is list:
            out = "[" + ", ".join(items) + "]"
        else:
            return None
    return out if len(out) < maxlen else None


def _flat_scalar(value) -> str | None:
    if type(value) is str:
        return _quoted(value)
    if type(value) in _NUMBERS_AND_NONE:
        return str(value)
    return None


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"
