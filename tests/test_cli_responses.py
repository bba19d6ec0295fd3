"""The command line on the Responses API (--api responses): as a user runs it, against the simulator.

The independent cases run at once (each a subprocess) so the module stays quick."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import tempfile

from tests.test_cli import CLITestCase

MODEL = "gloo-openai-gpt-5-mini"


class CLIResponsesTests(CLITestCase):
    def run_all(self, cases: dict[str, tuple]) -> dict:
        with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
            futures = {name: pool.submit(self.run_cli, *args) for name, args in cases.items()}
            return {name: future.result() for name, future in futures.items()}

    def test_the_responses_api_from_the_command_line(self):
        image_dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, image_dir, True)
        picture = os.path.join(self.cwd, "picture.png")
        with open(picture, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 92)
        not_an_image = os.path.join(self.cwd, "notes.txt")
        with open(not_an_image, "w") as handle:
            handle.write("hello")
        runs = self.run_all({
            "text": ("--api", "responses", "--model", MODEL, "What is discipleship?"),
            "json": ("--api", "responses", "--model", MODEL, "--json", "Hi"),
            "no model": ("--api", "responses", "Hi"),
            "chat-only flag": ("--api", "responses", "--model", MODEL, "--tradition", "catholic", "Hi"),
            "reasoning": ("--api", "responses", "--model", "gloo-openai-gpt-5", "Hi"),
            "no reasoning": ("--api", "responses", "--model", "gloo-openai-gpt-5", "--no-reasoning", "Hi"),
            "image in": ("--api", "responses", "--model", MODEL, "--image", picture, "What is this?"),
            "not an image": ("--api", "responses", "--model", MODEL, "--image", not_an_image, "Hi"),
            "image out": ("--api", "responses", "--model", MODEL, "--image-generation", "--image-dir", image_dir,
                          "Draw a cross"),
            "image without the api": ("--image", picture, "Hi"),
            "raw": ("--api", "responses", "--model", MODEL, "--raw", "Hi"),
            "cut short": ("--api", "responses", "--model", MODEL, "Hi [[drop]]"),
            "limit": ("--api", "responses", "--model", MODEL, "--max-tokens", "1", "Hi"),
        })
        text = runs["text"]
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("disciple", text.stdout.lower())
        self.assertRegex(text.stderr, r"\[\d+ tokens · first token \d+ ms · \d+ ms · usage \d+ in / \d+ out · "
                                      r"\$0\.[0-9]+ · finish_reason=completed\]")  # priced by the catalog

        result = json.loads(runs["json"].stdout)
        self.assertEqual((result["status"], result["outcome"]["kind"], result["exit_code"]),
                         ("completed", "finished", 0))
        self.assertEqual(result["usage"]["output_tokens"], result["token_count"])
        self.assertEqual(result["model"], MODEL)

        self.assertEqual(runs["no model"].returncode, 2)
        self.assertIn("needs --model", runs["no model"].stderr)
        self.assertIn("hint: e.g. --api responses --model gloo-openai-gpt-5-mini", runs["no model"].stderr)
        self.assertEqual(runs["chat-only flag"].returncode, 2)
        self.assertIn("--tradition belong to Completions V2", runs["chat-only flag"].stderr)

        self.assertIn("[reasoning]", runs["reasoning"].stderr)
        self.assertIn("The question asks", runs["reasoning"].stderr)
        self.assertNotIn("The question asks", runs["reasoning"].stdout)
        self.assertNotIn("The question asks", runs["no reasoning"].stderr)

        self.assertIn("I see an image (image/png, 100 bytes).", runs["image in"].stdout)
        self.assertEqual(runs["not an image"].returncode, 2)
        self.assertIn("not a PNG, JPEG, WebP or GIF image", runs["not an image"].stderr)
        self.assertEqual(runs["image without the api"].returncode, 2)
        self.assertIn("--image needs the Responses API", runs["image without the api"].stderr)

        out = runs["image out"]
        self.assertEqual(out.returncode, 0, out.stderr)
        written = os.listdir(image_dir)
        self.assertEqual(len(written), 1)
        self.assertIn(f"[image written to {os.path.join(image_dir, written[0])}", out.stderr)
        with open(os.path.join(image_dir, written[0]), "rb") as handle:
            self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertNotIn(base64.b64encode(b"\x89PNG").decode()[:6], out.stdout)  # never base64 on the screen

        raw = runs["raw"]
        self.assertTrue(raw.stdout.startswith("event: response.created\ndata: {"), raw.stdout[:80])
        self.assertIn("event: response.completed", raw.stdout)

        self.assertEqual(runs["cut short"].returncode, 1)
        self.assertIn("error: the stream ended before the response completed", runs["cut short"].stderr)
        self.assertIn("[1 token ·", runs["limit"].stderr)
        self.assertIn("finish_reason=max_output_tokens", runs["limit"].stderr)

    def test_gloo_api_chooses_the_api(self):
        env = dict(self.fake.env, GLOO_API="responses")
        proc = self.run_cli("--model", MODEL, "--json", "Hi", env=env)
        self.assertEqual(json.loads(proc.stdout)["status"], "completed")
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v1/responses")
        bad = self.run_cli("Hi", env=dict(self.fake.env, GLOO_API="soap"))
        self.assertEqual(bad.returncode, 2)
        self.assertIn("GLOO_API must be chat or responses", bad.stderr)
