"""Drive one provider's official SDK through keybroker: a plain call and a streamed call.

Usage: drive.py openai|anthropic|google  (env: KB_BASE=http://127.0.0.1:PORT, KB_TOKEN=kb_...)
Prints one JSON object: the text each call produced and the usage the SDK saw.
On an SDK error prints {"error": {"class", "status", "message"}} and exits 0, so the caller asserts.
"""
import json
import os
import sys

base = os.environ["KB_BASE"]
token = os.environ["KB_TOKEN"]
extra = {}
if os.environ.get("KB_FAKE_MODE"):
    extra = {"x-fake-mode": os.environ["KB_FAKE_MODE"]}


def openai_calls():
    import openai

    client = openai.OpenAI(base_url=f"{base}/proxy/openai/v1", api_key=token, max_retries=0, default_headers=extra)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    out = {"text": r.choices[0].message.content, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens]}
    chunks, usage_chunks = [], 0
    for ch in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
    ):
        if ch.usage is not None:
            usage_chunks += 1
        for c in ch.choices:
            if c.delta.content:
                chunks.append(c.delta.content)
    out["stream_text"] = "".join(chunks)
    out["stream_usage_chunks_seen"] = usage_chunks
    return out


def anthropic_calls():
    import anthropic

    client = anthropic.Anthropic(base_url=f"{base}/proxy/anthropic", api_key=token, max_retries=0, default_headers=extra)
    r = client.messages.create(model="claude-sonnet-4-20250514", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    out = {"text": r.content[0].text, "usage": [r.usage.input_tokens, r.usage.output_tokens]}
    with client.messages.stream(
        model="claude-sonnet-4-20250514", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        out["stream_text"] = "".join(stream.text_stream)
        final = stream.get_final_message()
        out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]
    return out


def google_calls():
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=token, http_options={"base_url": f"{base}/proxy/google", "headers": extra})
    cfg = types.GenerateContentConfig(max_output_tokens=50)
    r = client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=cfg)
    out = {"text": r.text, "usage": [r.usage_metadata.prompt_token_count, r.usage_metadata.candidates_token_count]}
    parts = []
    for ch in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi", config=cfg):
        parts.append(ch.text or "")
    out["stream_text"] = "".join(parts)
    return out


def main():
    which = sys.argv[1]
    try:
        out = {"openai": openai_calls, "anthropic": anthropic_calls, "google": google_calls}[which]()
    except Exception as e:  # the caller asserts on the class and status
        out = {"error": {"class": type(e).__name__, "status": getattr(e, "status_code", getattr(e, "code", None)), "message": str(e)}}
    print(json.dumps(out))


main()
