'use strict';
// A virtual clock and a scripted wx for client.test.js: no network, no real time.

const START = Date.parse('2026-03-01T00:00:00Z');

/** Fake timers: setTimeout/clearTimeout/now on a clock that moves only when told. */
function fakeClock(start = START) {
  let t = start;
  let nextId = 1;
  const timers = new Map();
  const clock = {
    now: () => t,
    setTimeout(fn, ms) {
      const id = nextId++;
      timers.set(id, { at: t + Math.max(0, ms || 0), fn, id });
      return id;
    },
    clearTimeout(id) { timers.delete(id); },
    pending() { return [...timers.values()].map((x) => x.at - t).sort((a, b) => a - b); },
    /** Move the clock forward by ms, firing due timers in order and letting promises settle. */
    async advance(ms) {
      const target = t + ms;
      await settle();
      for (;;) {
        const due = [...timers.values()].filter((x) => x.at <= target).sort((a, b) => a.at - b.at || a.id - b.id)[0];
        if (!due) break;
        timers.delete(due.id);
        t = due.at;
        due.fn();
        await settle();
      }
      t = target;
      await settle();
    },
  };
  return clock;
}

/** Let every pending promise chain run (answers are delivered as microtasks). */
async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

function json(status, body, headers = {}) {
  return { statusCode: status, data: body === undefined ? '' : JSON.stringify(body), header: headers };
}

function apiError(status, code, message, details, headers = {}) {
  const error = { code, message: message || code };
  if (details !== undefined) error.details = details;
  return json(status, { error }, headers);
}

/**
 * A wx object whose request/uploadFile answer from `routes`: a function (req) -> answer,
 * where an answer is {statusCode, data, header}, or {fail: 'errMsg'} for a network failure.
 * Every call is recorded in wx.calls (request) and wx.uploads (uploadFile).
 */
function fakeWx(routes, { storage = new Map(), codes } = {}) {
  let codeN = 0;
  const hide = new Set();
  const show = new Set();
  const wx = {
    calls: [],
    uploads: [],
    storage,
    offCalls: [],
    request(opts) {
      const body = opts.data === undefined ? undefined : JSON.parse(opts.data);
      const req = { method: opts.method, url: opts.url, path: opts.url.replace(/^https?:\/\/[^/]+/, ''),
        header: opts.header, body, opts, at: wx.clock ? wx.clock.now() : 0 };
      wx.calls.push(req);
      const answer = routes(req);
      Promise.resolve().then(() => {
        if (!answer || answer.fail) opts.fail({ errMsg: 'request:fail ' + ((answer && answer.fail) || 'no route') });
        else opts.success(answer);
      });
    },
    uploadFile(opts) {
      wx.uploads.push(opts);
      const answer = routes({ method: 'UPLOAD', url: opts.url, path: opts.url, upload: opts });
      Promise.resolve().then(() => {
        if (!answer || answer.fail) opts.fail({ errMsg: 'uploadFile:fail ' + ((answer && answer.fail) || 'no route') });
        else opts.success(answer);
      });
    },
    login(opts) {
      codeN += 1;
      const code = codes ? codes(codeN) : 'code-' + codeN;
      Promise.resolve().then(() => (code ? opts.success({ code, errMsg: 'login:ok' }) : opts.fail({ errMsg: 'login:fail' })));
    },
    getStorageSync(key) { return storage.has(key) ? storage.get(key) : ''; },
    setStorageSync(key, value) { storage.set(key, value); },
    removeStorageSync(key) { storage.delete(key); },
    onAppHide(fn) { hide.add(fn); },
    onAppShow(fn) { show.add(fn); },
    offAppHide(fn) { wx.offCalls.push('hide'); hide.delete(fn); },
    offAppShow(fn) { wx.offCalls.push('show'); show.delete(fn); },
    hideApp() { hide.forEach((fn) => fn()); },
    showApp() { show.forEach((fn) => fn()); },
    listeners() { return { hide: hide.size, show: show.size }; },
  };
  return wx;
}

module.exports = { fakeClock, fakeWx, json, apiError, settle, START };
