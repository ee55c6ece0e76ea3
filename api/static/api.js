// skillq's REST API from the browser: calls and Server-Sent Events, with the credential the
// dashboard keeps in sessionStorage. A refused credential (401) is announced with a
// "skillq:unauthorized" event on window; the page decides what to do about it.
"use strict";

const CREDENTIAL = "skillq.credential"; // sessionStorage: this tab only, gone when it closes
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function unauthorized(message) {
  window.dispatchEvent(new CustomEvent("skillq:unauthorized", { detail: message }));
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `the server answered ${status}`);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  const headers = new Headers(extra);
  const credential = sessionStorage.getItem(CREDENTIAL);
  // API keys are accepted as bearer credentials too (`Bearer skq_...`).
  if (credential) headers.set("Authorization", `Bearer ${credential}`);
  return headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (response.status === 401) {
    unauthorized("The server did not accept that credential. Sign in again.");
    throw new ApiError(401, null);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// Reads a Server-Sent Events stream, calling onEvent(name, data) per event; reconnects with
// Last-Event-ID after a network error. Resolves with the HTTP status if the stream was
// refused, or "ended" once the server closed it.
async function follow(path, onEvent, signal) {
  let lastId = null;
  for (let failures = 0; failures < 5 && !signal.aborted; failures++) {
    try {
      const extra = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await fetch(path, { headers: authHeaders(extra), signal });
      if (response.status === 401) unauthorized("Your session has ended. Sign in again.");
      if (!response.ok) return response.status;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "ended";
        buffer += value;
        let cut;
        while ((cut = /\r?\n\r?\n/.exec(buffer))) {
          const event = parseEvent(buffer.slice(0, cut.index));
          buffer = buffer.slice(cut.index + cut[0].length);
          if (event.id) lastId = event.id;
          if (event.data !== null) onEvent(event.name, event.data);
        }
      }
    } catch (error) {
      if (signal.aborted) return "aborted";
      await sleep(1000);
    }
  }
  return "gave up";
}

function parseEvent(block) {
  const event = { name: "message", data: null, id: null };
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue; // a comment: keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.name = value;
    else if (field === "id") event.id = value;
    else if (field === "data") event.data = event.data === null ? value : `${event.data}\n${value}`;
  }
  return event;
}
