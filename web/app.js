// SPDX-License-Identifier: MIT
/* gloo-stream: the chat page.
 *
 * POSTs the conversation to the proxy's /api/stream (same origin), reads the event stream
 * with fetch + ReadableStream + GlooSSE, and re-renders the whole answer with GlooMarkdown
 * after every read. The model's text only ever reaches the page through GlooMarkdown, which
 * builds elements with createElement/textContent; this file never assigns HTML either.
 */
(function () {
  "use strict";

  var STREAM_URL = "/api/stream";
  var HEALTH_URL = "/health";
  var KEY_STORAGE = "glooStream.apiKey";
  var CONNECTING = "Connecting\u2026";
  var STREAMING = "Streaming\u2026";

  function byId(id) {
    return document.getElementById(id);
  }

  var ui = {
    form: byId("composer"),
    prompt: byId("prompt"),
    sendBtn: byId("sendBtn"),
    stopBtn: byId("stopBtn"),
    newBtn: byId("newBtn"),
    status: byId("status"),
    meta: byId("meta"),
    output: byId("output"),
    intro: byId("intro"),
    history: byId("history"),
    currentQuestion: byId("currentQuestion"),
    currentAnswer: byId("currentAnswer"),
    question: byId("question"),
    modelFamily: byId("modelFamily"),
    tradition: byId("tradition"),
    apiKeyRow: byId("apiKeyRow"),
    apiKey: byId("apiKey")
  };

  var state = {
    messages: [],       // the finished exchanges, sent as context with the next question
    controller: null,   // the AbortController of the stream in flight
    run: null           // the exchange on screen (see newRun)
  };

  // ---------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------

  function now() {
    return window.performance && performance.now ? performance.now() : Date.now();
  }

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      return "";  // storage disabled: the field still works for this page's life
    }
  }

  function storeKey(value) {
    try {
      if (value) window.sessionStorage.setItem(KEY_STORAGE, value);
      else window.sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) {
      /* storage disabled */
    }
  }

  function showKeyField(focus) {
    ui.apiKeyRow.hidden = false;
    if (focus) ui.apiKey.focus();
  }

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = "status" + (kind ? " is-" + kind : "");
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  /** The figures of a run: "N tokens", "X ms", and once content came, first token and tokens/s. */
  function metaParts(run) {
    var end = run.finished === null ? now() : run.finished;
    var ms = Math.max(0, Math.round(end - run.started));
    var parts = [plural(run.tokens, "token"), ms + " ms"];
    if (run.firstToken !== null) {
      parts.push("first token " + Math.round(run.firstToken - run.started) + " ms");
      if (ms > 0 && run.tokens > 0) parts.push((run.tokens / (ms / 1000)).toFixed(1) + " tokens/s");
    }
    return parts;
  }

  /** `target` as "a • b • c", each figure kept whole when the line wraps on a narrow screen. */
  function fillMeta(target, parts) {
    target.replaceChildren();
    for (var i = 0; i < parts.length; i++) {
      if (i > 0) target.appendChild(document.createTextNode(" \u2022 "));
      var part = document.createElement("span");
      part.className = "meta-part";
      part.textContent = parts[i];
      target.appendChild(part);
    }
  }

  function showMeta(parts) {
    fillMeta(ui.meta, parts);
  }

  function setStreaming(streaming) {
    ui.sendBtn.disabled = streaming;
    ui.stopBtn.disabled = !streaming;
    ui.newBtn.disabled = streaming;
    ui.output.setAttribute("aria-busy", streaming ? "true" : "false");
    document.body.classList.toggle("is-streaming", streaming);
  }

  /** Where the blinking cursor goes: the end of the last block that holds text. */
  function cursorHost(root) {
    var host = root;
    for (;;) {
      var last = host.lastChild;
      if (!last || last.nodeType !== 1 || !/^(P|H[1-6]|UL|OL|LI|PRE|CODE)$/.test(last.nodeName)) return host;
      host = last;
    }
  }

  function makeCursor() {
    var cursor = document.createElement("span");
    cursor.className = "cursor";
    cursor.setAttribute("aria-hidden", "true");
    return cursor;
  }

  function nearBottom() {
    var doc = document.documentElement;
    return window.innerHeight + window.scrollY >= doc.scrollHeight - 120;
  }

  function scrollToEnd() {
    window.scrollTo(0, document.documentElement.scrollHeight);
  }

  // ---------------------------------------------------------------------------
  // The answer on screen
  // ---------------------------------------------------------------------------

  function newRun(question) {
    return {
      question: question,
      text: "",
      tokens: 0,
      started: now(),
      firstToken: null,
      finished: null,
      finishReason: null,
      sawDone: false,
      error: null,
      stopped: false,
      gotResponse: false,
      outcome: ""
    };
  }

  function renderAnswer(run, streaming) {
    var follow = nearBottom();
    var fragment = window.GlooMarkdown.render(run.text);
    if (streaming) cursorHost(fragment).appendChild(makeCursor());
    ui.output.replaceChildren(fragment);
    showMeta(metaParts(run));
    if (follow) scrollToEnd();
  }

  function block(tag, className, text) {
    var node = document.createElement(tag);
    node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** Move the finished exchange on screen into the history (exchanges without an answer go). */
  function archiveCurrent() {
    var run = state.run;
    state.run = null;
    if (run && run.text) {
      var turn = block("article", "turn");
      var question = block("div", "question");
      question.appendChild(block("p", "speaker", "You"));
      question.appendChild(block("p", "question-text", run.question));
      var answerBlock = block("div", "answer-block");
      answerBlock.appendChild(block("p", "speaker", "Answer"));
      var answer = block("div", "answer markdown");
      while (ui.output.firstChild) answer.appendChild(ui.output.firstChild);
      answerBlock.appendChild(answer);
      var note = block("p", "turn-meta" + (run.outcome.indexOf("Error") === 0 ? " is-error" : ""));
      fillMeta(note, (run.outcome && run.outcome !== "Done" ? [run.outcome] : []).concat(metaParts(run)));
      answerBlock.appendChild(note);
      turn.appendChild(question);
      turn.appendChild(answerBlock);
      ui.history.appendChild(turn);
    }
    ui.output.replaceChildren();
    ui.question.textContent = "";
    ui.currentQuestion.hidden = true;
    ui.currentAnswer.hidden = true;
  }

  // ---------------------------------------------------------------------------
  // Reading the stream
  // ---------------------------------------------------------------------------

  function errorMessage(error) {
    if (typeof error === "string") return error;
    if (error && typeof error === "object") {
      if (typeof error.message === "string" && error.message) return error.message;
      if (error.name || error.code) return String(error.name || error.code);
    }
    return "the stream reported an error";
  }

  /** Apply one event's data to the run: content, finish_reason, errors. */
  function handleEvent(run, data) {
    if (data === "[DONE]") {
      run.sawDone = true;
      return;
    }
    var chunk;
    try {
      chunk = JSON.parse(data);
    } catch (e) {
      return;  // not JSON: nothing a person should see
    }
    if (!chunk || typeof chunk !== "object") return;
    if (chunk.error && run.error === null) run.error = errorMessage(chunk.error);
    var choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
    if (!choice || typeof choice !== "object") return;
    var delta = choice.delta;
    var content = delta && typeof delta.content === "string" ? delta.content : "";
    if (content) {
      if (run.firstToken === null) run.firstToken = now();
      run.text += content;
      run.tokens += 1;
    }
    if (typeof choice.finish_reason === "string" && choice.finish_reason) run.finishReason = choice.finish_reason;
  }

  /** The message of a non-200 answer: the proxy's {"error": {"message", …}} when it sent one. */
  function describeFailure(response, bodyText) {
    var message = "";
    try {
      var parsed = JSON.parse(bodyText);
      if (parsed && parsed.error) message = errorMessage(parsed.error);
    } catch (e) {
      message = "";
    }
    var status = response.status;
    if (status === 401) {
      return ui.apiKey.value
        ? "the API key was not accepted (401). Check the key and send again."
        : "this proxy needs an API key (401). Enter it in the API key field and send again.";
    }
    if (status === 429) {
      var wait = response.headers.get("Retry-After");
      return (message || "too many requests") + " (429)" + (wait ? ". Try again in " + wait + " s." : "");
    }
    return (message || "the proxy answered " + (response.statusText || "an error")) + " (" + status + ")";
  }

  function requestBody(messages) {
    var body = { messages: messages };
    if (ui.modelFamily.value) body.model_family = ui.modelFamily.value;
    if (ui.tradition.value) body.tradition = ui.tradition.value;
    return JSON.stringify(body);
  }

  function send() {
    var question = ui.prompt.value;
    if (state.controller || !question.trim()) {
      if (!state.controller) ui.prompt.focus();
      return;
    }
    archiveCurrent();
    ui.intro.hidden = true;
    var run = newRun(question);
    state.run = run;
    ui.question.textContent = question;
    ui.currentQuestion.hidden = false;
    ui.currentAnswer.hidden = false;
    ui.prompt.value = "";
    var messages = state.messages.concat([{ role: "user", content: question }]);

    var headers = { "Content-Type": "application/json", "Accept": "text/event-stream" };
    var key = ui.apiKey.value.trim();
    if (key) headers.Authorization = "Bearer " + key;

    var controller = new AbortController();
    state.controller = controller;
    setStreaming(true);
    setStatus(CONNECTING, "busy");
    renderAnswer(run, true);
    scrollToEnd();

    stream(run, headers, requestBody(messages), controller.signal)
      .catch(function (err) {
        if (err && err.name === "AbortError") {
          run.stopped = true;
        } else if (run.error === null) {
          run.error = run.gotResponse
            ? "connection lost (" + ((err && err.message) || "read failed") + ")"
            : "could not reach the proxy (" + ((err && err.message) || "network error") + ")";
        }
      })
      .then(function () {
        finish(run, messages);
      });
  }

  function stream(run, headers, body, signal) {
    return fetch(STREAM_URL, {
      method: "POST",
      headers: headers,
      body: body,
      signal: signal,
      cache: "no-store",
      credentials: "same-origin"
    }).then(function (response) {
      run.gotResponse = true;
      if (!response.ok) {
        if (response.status === 401) showKeyField(true);
        return response.text().then(function (text) {
          run.error = describeFailure(response, text);
        });
      }
      if (!response.body) {
        run.error = "this browser cannot read streamed responses";
        return undefined;
      }
      setStatus(STREAMING, "busy");
      var reader = response.body.getReader();
      var decoder = new TextDecoder("utf-8");
      var parser = window.GlooSSE.createParser();

      function take(events) {
        for (var i = 0; i < events.length; i++) handleEvent(run, events[i].data);
      }

      function pump() {
        return reader.read().then(function (result) {
          if (result.done) {
            take(parser.feed(decoder.decode()));
            take(parser.end());
            return undefined;
          }
          take(parser.feed(decoder.decode(result.value, { stream: true })));
          if (run.sawDone) {
            reader.cancel().catch(function () {});
            return undefined;
          }
          renderAnswer(run, true);
          return pump();
        });
      }
      return pump();
    });
  }

  function finish(run, messages) {
    run.finished = now();
    state.controller = null;
    setStreaming(false);
    if (state.run !== run) return;  // a new conversation was started meanwhile
    renderAnswer(run, false);

    var outcome, kind;
    if (run.stopped) {
      outcome = "Stopped";
      kind = "stopped";
    } else if (run.error !== null) {
      outcome = "Error: " + run.error;
      kind = "error";
    } else if (run.finishReason === "error") {
      outcome = "Error: the model's provider failed before the answer finished";
      kind = "error";
    } else if (run.finishReason === "content_filter") {
      outcome = "Error: the answer was stopped by the content filter";
      kind = "error";
    } else if (run.finishReason === null && !run.sawDone) {
      outcome = "Error: connection lost before the answer finished";
      kind = "error";
    } else {
      outcome = run.finishReason === "length" ? "Done (the answer reached its length limit)" : "Done";
      kind = "done";
    }
    run.outcome = outcome;
    setStatus(outcome, kind);
    showMeta(run.gotResponse && (run.text || run.error === null) ? metaParts(run) : []);

    if (run.text) {
      // Even a stopped or broken answer is context: the next question may be about it.
      state.messages = messages.concat([{ role: "assistant", content: run.text }]);
    } else if (!ui.prompt.value) {
      ui.prompt.value = run.question;  // nothing came back: give the question back to retry
    }
    if (!ui.apiKeyRow.hidden && document.activeElement === ui.apiKey) return;
    ui.prompt.focus();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newConversation() {
    if (state.controller) return;
    state.messages = [];
    archiveCurrent();
    ui.history.replaceChildren();
    ui.intro.hidden = false;
    ui.meta.textContent = "";
    setStatus("Ready", "");
    ui.prompt.value = "";
    ui.prompt.focus();
  }

  // ---------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------

  ui.form.addEventListener("submit", function (event) {
    event.preventDefault();
    send();
  });
  ui.stopBtn.addEventListener("click", stop);
  ui.newBtn.addEventListener("click", newConversation);
  ui.prompt.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    send();
  });
  ui.apiKey.value = storedKey();
  ui.apiKey.addEventListener("input", function () {
    storeKey(ui.apiKey.value.trim());
  });
  if (ui.apiKey.value) showKeyField(false);

  fetch(HEALTH_URL, { cache: "no-store", credentials: "same-origin" })
    .then(function (response) {
      return response.ok ? response.json() : null;
    })
    .then(function (health) {
      if (health && health.auth_required === true) showKeyField(false);
      document.documentElement.setAttribute("data-health", health ? "ok" : "unavailable");
    })
    .catch(function () {
      // No health route: the key field still appears on a 401.
      document.documentElement.setAttribute("data-health", "unavailable");
    });

  setStreaming(false);
  ui.prompt.focus();
})();
