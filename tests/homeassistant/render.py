"""Renders the templates of sotad's Home Assistant discovery document the way Home Assistant
does (Jinja2; `value` and `value_json`; `now()`; the `tojson` filter), so the test can check
them against sotad's real messages.

stdin: {"document": {...}, "messages": {"<topic>": "<payload>"}}
stdout: {"<component>": {"state": <rendered value_template or null>,
                         "commands": {"<value>": "<rendered command_template>"}}}
"""
import datetime
import json
import sys

import jinja2

env = jinja2.Environment()
env.globals["now"] = datetime.datetime.now
env.globals["None"] = None
env.policies["json.dumps_kwargs"] = {"sort_keys": False}


def render(template, **context):
    return env.from_string(template).render(**context)


def main():
    req = json.load(sys.stdin)
    out = {}
    for key, comp in req["document"]["components"].items():
        res = {"state": None, "commands": {}}
        topic = comp.get("state_topic", "")
        payload = None
        if topic.endswith("/+"):
            prefix = topic[:-1]
            payload = next((p for t, p in req["messages"].items() if t.startswith(prefix)), None)
        else:
            payload = req["messages"].get(topic)
        if payload is not None and "value_template" in comp:
            res["state"] = render(comp["value_template"], value=payload, value_json=json.loads(payload))
        if "command_template" in comp:
            values = {"switch": ["ON", "OFF"], "button": ["PRESS"], "text": ['Say "hi" now.']}
            for v in values.get(comp["platform"], []):
                res["commands"][v] = render(comp["command_template"], value=v)
        out[key] = res
    json.dump(out, sys.stdout)


main()
