/* comfy-gateway demo page: a browser client of the mobile API (docs/API.md).
 *
 * No build step and no dependencies. What it shows an app developer:
 * - polling GET /v1/jobs/{id} after `poll_after_ms`, with If-None-Match (304 = unchanged),
 *   and backing off on 429/503 (and other 5xx, and network errors) by Retry-After;
 * - submitting with an Idempotency-Key, reused when the same submit is retried;
 * - the gradual reveal: the live preview is blurred less as progress grows, then the
 *   result image cross-fades in over it.
 *
 * Four classic scripts, run in this order by index.html, share one namespace, window.Demo:
 * - api.js (this file): the shared state, little DOM helpers, and the HTTP calls (token, back-off);
 * - job.js: the job panel (polling, queue, ETA, progress, the reveal, result, cancel) and My jobs;
 * - form.js: the workflows and the form built from their params (checks, uploads, submit);
 * - demo.js: the login, and the wiring that starts the page.
 * Each file adds its functions to window.Demo and takes what earlier files added; a function of a
 * later file is called through the namespace (D.expired()), so it is looked up when it runs.
 */
(() => {
  'use strict';

  const D = (window.Demo = {});
  const $ = (id) => document.getElementById(id);
  const MAX_BACKOFF_MS = 30000;
  const MAX_RETRY_AFTER_MS = 5 * 60000;

  const state = {
    token: null,
    user: null,
    workflows: [],
    workflow: null,
    watch: null, // the job shown in the job panel: {id, job, etag, timer, attempt, ...}
    jobs: [],
    jobsCursor: null,
    jobsTimer: 0,
    jobsSeq: 0,
    workflowsTimer: 0,
    cooldownTimer: 0,
  };

  // ------------------------------------------------------------------ HTTP

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** How long to wait before trying again: Retry-After (seconds or a date), else exponential backoff. */
  function retryAfterMs(headers, attempt) {
    const raw = headers ? headers.get('Retry-After') : null;
    if (raw) {
      const seconds = Number(raw);
      if (Number.isFinite(seconds) && seconds >= 0) return Math.min(seconds * 1000, MAX_RETRY_AFTER_MS);
      const when = Date.parse(raw);
      if (!Number.isNaN(when)) return Math.min(Math.max(when - Date.now(), 0), MAX_RETRY_AFTER_MS);
    }
    return Math.min(1000 * 2 ** Math.max(attempt - 1, 0), MAX_BACKOFF_MS);
  }

  /** One API request; resolves to {status, headers, data} (throws only when the network fails). */
  async function api(method, path, { body, headers = {} } = {}) {
    const h = { ...headers };
    if (state.token) h.Authorization = `Bearer ${state.token}`;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    // no-store: the page does its own revalidation (If-None-Match), and a 304 must reach it as such.
    const resp = await fetch(path, {
      method, headers: h, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    if (resp.status !== 204 && resp.status !== 304) {
      const text = await resp.text();
      try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    }
    return { status: resp.status, headers: resp.headers, data };
  }

  /** An API request retried on the given statuses and on network errors, waiting Retry-After. */
  async function call(method, path, opts = {}, { retries = 4, retryOn = [429, 503], what = 'Request' } = {}) {
    for (let attempt = 1; ; attempt++) {
      let r;
      try {
        r = await api(method, path, opts);
      } catch (e) {
        if (attempt > retries) throw new Error(`${what}: the network failed (${e.message})`);
        const ms = retryAfterMs(null, attempt);
        note(`${what}: the network failed, trying again in ${seconds(ms)}`);
        await sleep(ms);
        continue;
      }
      if (r.status === 401 && state.token) {
        D.expired();
        throw new Error('the session expired: log in again');
      }
      if (retryOn.includes(r.status) && attempt <= retries) {
        const ms = retryAfterMs(r.headers, attempt);
        note(`${what}: ${errorText(r)}; trying again in ${seconds(ms)}`);
        await sleep(ms);
        continue;
      }
      note('');
      return r;
    }
  }

  function errorText(r) {
    const err = r.data && r.data.error;
    return err ? `${err.message} (${err.code})` : `HTTP ${r.status}`;
  }

  /** A key for one submit (crypto.randomUUID needs a secure context; a phone on the LAN has none). */
  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return 'demo-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ------------------------------------------------------------------ little helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function seconds(ms) { return `${Math.max(1, Math.round(ms / 1000))} s`; }

  function duration(s) {
    if (s == null || !Number.isFinite(s)) return '';
    if (s < 60) return `${Math.max(1, Math.round(s))} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }

  function humanize(name) {
    const text = name.replace(/_/g, ' ');
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function note(text) { $('status-line').textContent = text; }

  Object.assign(D, {
    $, state, retryAfterMs, api, call, errorText, newKey, el, seconds, duration, humanize, note,
  });
})();
