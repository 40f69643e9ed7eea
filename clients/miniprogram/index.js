'use strict';
/**
 * comfy-gateway client for mini-programs (WeChat native, uni-app, Taro).
 *
 * One file, no dependencies, no build step: copy it into the mini-program
 * (e.g. as utils/gateway.js) and require it. Plain ES2017, CommonJS.
 *
 *   const { createClient, GatewayError } = require('./utils/gateway.js');
 *   const gw = createClient({ baseUrl: 'https://api.example.com', wx });
 *   await gw.login();
 *   const job = await gw.submit('txt2img', { prompt: 'a cat' });
 *   const w = gw.watch(job.id, (j) => this.setData({ job: j }));
 *   const final = await w.done;
 *
 * The contract it speaks is docs/API.md of comfy-gateway. Every failure is a
 * GatewayError carrying the contract's code (or `network_error` when no answer
 * came, `bad_response` when the answer was not the contract's, `login_failed`
 * when wx.login gave no code).
 */

var FINAL_STATES = ['succeeded', 'failed', 'cancelled'];
var STORAGE_KEY = 'comfy-gateway:session';

/**
 * The one error type of this library: code, message, details, status, retryAfter.
 *
 * A plain constructor (not `class extends Error`) so that `instanceof` still
 * works when a mini-program tool compiles the file down to ES5.
 */
function GatewayError(code, message, options) {
  var opts = options || {};
  var err = this instanceof GatewayError ? this : Object.create(GatewayError.prototype);
  err.code = code;
  err.message = message || code;
  err.details = opts.details === undefined ? null : opts.details;
  err.status = opts.status || 0;
  err.retryAfter = opts.retryAfter === undefined ? null : opts.retryAfter;
  if (opts.cause !== undefined) err.cause = opts.cause;
  if (typeof Error.captureStackTrace === 'function') {
    Error.captureStackTrace(err, GatewayError);
  } else {
    err.stack = new Error(err.message).stack;
  }
  return err;
}
GatewayError.prototype = Object.create(Error.prototype, {
  constructor: { value: GatewayError, writable: true, configurable: true },
});
GatewayError.prototype.name = 'GatewayError';
GatewayError.prototype.toJSON = function () {
  return { name: this.name, code: this.code, message: this.message, details: this.details,
    status: this.status, retryAfter: this.retryAfter };
};

/** True for a job in a final state (succeeded, failed, cancelled): it never changes again. */
function isFinal(job) {
  return !!job && FINAL_STATES.indexOf(job.status) >= 0;
}

/** The value of a response header, whatever the case of its name (platforms differ), or null. */
function headerValue(headers, name) {
  if (!headers) return null;
  var wanted = name.toLowerCase();
  var keys = Object.keys(headers);
  for (var i = 0; i < keys.length; i++) {
    if (keys[i].toLowerCase() === wanted) {
      var value = headers[keys[i]];
      if (Array.isArray(value)) value = value[0];
      return value === undefined || value === null ? null : String(value);
    }
  }
  return null;
}

/** Retry-After as seconds (a number, or null when absent or unreadable). */
function parseRetryAfter(text, nowMs) {
  if (text === null || text === undefined) return null;
  var trimmed = String(text).trim();
  if (/^\d+$/.test(trimmed)) return parseInt(trimmed, 10);
  var when = Date.parse(trimmed);
  if (isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - nowMs) / 1000));
}

/** A UUID v4 for Idempotency-Key (crypto.getRandomValues when the platform has it). */
function newIdempotencyKey() {
  var bytes = new Array(16);
  var cryptoObj = typeof crypto !== 'undefined' ? crypto : null;
  if (cryptoObj && typeof cryptoObj.getRandomValues === 'function') {
    var arr = cryptoObj.getRandomValues(new Uint8Array(16));
    for (var i = 0; i < 16; i++) bytes[i] = arr[i];
  } else {
    for (var j = 0; j < 16; j++) bytes[j] = Math.floor(Math.random() * 256);
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  var hex = bytes.map(function (b) { return (b + 0x100).toString(16).slice(1); }).join('');
  return hex.slice(0, 8) + '-' + hex.slice(8, 12) + '-' + hex.slice(12, 16) + '-' + hex.slice(16, 20) + '-' +
    hex.slice(20);
}

function networkError(err) {
  var msg = err && (err.errMsg || err.message) ? String(err.errMsg || err.message) : 'request failed';
  return new GatewayError('network_error', msg, { cause: err });
}

function parseJson(data) {
  if (typeof data !== 'string') return data;
  if (data === '') return undefined;
  try {
    return JSON.parse(data);
  } catch (e) {
    return data;
  }
}

/** The GatewayError of an answer that is not 2xx: the contract's error, or a plain one. */
function errorFromAnswer(status, body, headers, nowMs) {
  var retryAfter = parseRetryAfter(headerValue(headers, 'Retry-After'), nowMs);
  var e = body && typeof body === 'object' ? body.error : null;
  if (e && typeof e === 'object' && typeof e.code === 'string') {
    return new GatewayError(e.code, typeof e.message === 'string' ? e.message : e.code,
      { status: status, details: e.details === undefined ? null : e.details, retryAfter: retryAfter });
  }
  return new GatewayError('bad_response', 'HTTP ' + status + ' without an error in the contract\'s shape',
    { status: status, retryAfter: retryAfter, details: typeof body === 'string' ? { body: body.slice(0, 500) } : null });
}

/** The error of an upload target's refusal: local storage answers in the contract's shape, S3 in XML. */
function uploadTargetError(status, data, nowMs) {
  var body = parseJson(data);
  if (body && typeof body === 'object' && body.error) return errorFromAnswer(status, body, null, nowMs);
  var text = typeof data === 'string' ? data : '';
  var s3Code = (/<Code>([^<]*)<\/Code>/.exec(text) || [])[1] || null;
  var s3Message = (/<Message>([^<]*)<\/Message>/.exec(text) || [])[1] || null;
  var code = 'invalid_upload';
  if (s3Code === 'EntityTooLarge' || status === 413) code = 'payload_too_large';
  else if (status >= 500) code = 'storage_unavailable';
  return new GatewayError(code, s3Message || ('the upload target answered HTTP ' + status),
    { status: status, details: s3Code ? { storage_code: s3Code } : null });
}

/** Where the session (token) is kept: wx storage by default, a Web Storage-like object, or memory only. */
function sessionStore(option, wx, key) {
  if (option === false || option === null) {
    return { load: function () { return null; }, save: function () {}, clear: function () {} };
  }
  var get, set, remove;
  if (option && typeof option.getItem === 'function') {
    get = function () { return option.getItem(key); };
    set = function (v) { option.setItem(key, v); };
    remove = function () { option.removeItem(key); };
  } else if (wx && typeof wx.getStorageSync === 'function') {
    get = function () { return wx.getStorageSync(key); };
    set = function (v) { wx.setStorageSync(key, v); };
    remove = function () { if (typeof wx.removeStorageSync === 'function') wx.removeStorageSync(key); };
  } else {
    return sessionStore(false);
  }
  // Storage is a convenience: a full or broken storage never fails a call.
  return {
    load: function () {
      try {
        var text = get();
        return text ? JSON.parse(text) : null;
      } catch (e) {
        return null;
      }
    },
    save: function (session) { try { set(JSON.stringify(session)); } catch (e) { /* memory still has it */ } },
    clear: function () { try { remove(); } catch (e) { /* nothing to do */ } },
  };
}

/**
 * Create a client.
 *
 * options: baseUrl (required), wx (wx, uni or Taro), storage (Web Storage-like
 * object; false for memory only; default wx.setStorageSync), storageKey,
 * timeout (ms per request, 15000), uploadTimeout (60000), maxRetries (3),
 * backoffBaseMs (500), backoffMaxMs (30000), maxRetryAfter (seconds a
 * retry may wait for, 60), renewBeforeMs (300000), maxPollErrors (10), and for
 * tests setTimeout, clearTimeout, now, random.
 */
function createClient(options) {
  var opts = options || {};
  if (!opts.baseUrl) throw new TypeError('createClient: baseUrl is required');
  /* global wx */
  var api = opts.wx || (typeof wx !== 'undefined' ? wx : null);
  if (!api || typeof api.request !== 'function') {
    throw new TypeError('createClient: pass the platform object as wx (wx, uni or Taro)');
  }
  var baseUrl = String(opts.baseUrl).replace(/\/+$/, '');
  var setTimer = opts.setTimeout || function (fn, ms) { return setTimeout(fn, ms); };
  var clearTimer = opts.clearTimeout || function (id) { clearTimeout(id); };
  var now = opts.now || function () { return Date.now(); };
  var random = opts.random || Math.random;
  var requestTimeout = opts.timeout || 15000;
  var uploadTimeout = opts.uploadTimeout || 60000;
  var maxRetries = opts.maxRetries === undefined ? 3 : opts.maxRetries;
  var backoffBase = opts.backoffBaseMs || 500;
  var backoffMax = opts.backoffMaxMs || 30000;
  var maxRetryAfter = opts.maxRetryAfter === undefined ? 60 : opts.maxRetryAfter;
  var renewBefore = opts.renewBeforeMs === undefined ? 5 * 60 * 1000 : opts.renewBeforeMs;
  var maxPollErrors = opts.maxPollErrors === undefined ? 10 : opts.maxPollErrors;
  var store = sessionStore(opts.storage, api, opts.storageKey || STORAGE_KEY);

  // {token, expiresAt, renewAt (local clock, ms), user, via: {kind: 'wechat'} | {kind: 'dev', user}, baseUrl}
  var session = store.load();
  if (!session || typeof session.token !== 'string' || session.baseUrl !== baseUrl) session = null;
  var loginInFlight = null;

  function sleep(ms) {
    return new Promise(function (resolve) { setTimer(resolve, ms); });
  }

  /** Exponential backoff with jitter: between half and all of min(max, base * 2^attempt). */
  function backoff(attempt) {
    var cap = Math.min(backoffMax, backoffBase * Math.pow(2, attempt));
    return Math.round(cap / 2 + random() * cap / 2);
  }

  function wxRequest(method, path, body, headers) {
    return new Promise(function (resolve, reject) {
      var req = {
        url: baseUrl + path,
        method: method,
        header: headers,
        dataType: 'json',
        responseType: 'text',
        timeout: requestTimeout,
        success: function (res) {
          resolve({ status: res.statusCode, data: parseJson(res.data), headers: res.header || res.headers || {} });
        },
        fail: function (err) { reject(networkError(err)); },
      };
      if (body !== undefined) req.data = JSON.stringify(body);
      try {
        api.request(req);
      } catch (e) {
        reject(networkError(e));
      }
    });
  }

  /** One call: token attached (and renewed), 2xx/304 answers returned, anything else thrown. */
  async function call(method, path, callOpts) {
    var o = callOpts || {};
    var authed = o.auth !== false;
    var relogged = false;
    for (;;) {
      var headers = Object.assign({}, o.headers);
      if (o.body !== undefined) headers['Content-Type'] = 'application/json';
      if (authed) headers.Authorization = 'Bearer ' + await ensureToken();
      var res = await wxRequest(method, path, o.body, headers);
      if ((res.status >= 200 && res.status < 300) || res.status === 304) return res;
      var err = errorFromAnswer(res.status, res.data, res.headers, now());
      // An expired token (or one this server does not know: a changed SECRET_KEY, another deployment): once.
      if (authed && res.status === 401 && (err.code === 'token_expired' || err.code === 'unauthorized') && !relogged) {
        relogged = true;
        await relogin(true);
        continue;
      }
      throw err;
    }
  }

  /** How long to wait before retrying after err, or null when it must not be retried. */
  function retryDelay(err, attempt) {
    if (!(err instanceof GatewayError)) return null;
    if (err.code === 'network_error') return backoff(attempt);
    if (err.status === 503 && err.retryAfter !== null && err.retryAfter <= maxRetryAfter) return err.retryAfter * 1000;
    return null;
  }

  /** Run attempt(n) until it succeeds, retrying network errors and 503 + Retry-After maxRetries times. */
  async function withRetries(attempt, delayOf) {
    for (var n = 0; ; n++) {
      try {
        return await attempt(n);
      } catch (err) {
        var wait = n < maxRetries ? (delayOf || retryDelay)(err, n) : null;
        if (wait === null) throw err;
        await sleep(wait);
      }
    }
  }

  function field(res, name) {
    var value = res.data && typeof res.data === 'object' ? res.data[name] : undefined;
    if (value === undefined) {
      throw new GatewayError('bad_response', 'the answer has no "' + name + '"', { status: res.status });
    }
    return value;
  }

  function jobPath(jobId) {
    return '/v1/jobs/' + encodeURIComponent(String(jobId));
  }

  // ---- the session ----------------------------------------------------------------------

  function keep(res, via) {
    var body = res.data;
    if (!body || typeof body.token !== 'string') {
      throw new GatewayError('bad_response', 'the login answer has no token', { status: res.status });
    }
    // A phone's clock may be off by hours: measure the lifetime on the server's clock (its Date header).
    var expires = Date.parse(body.expires_at);
    var serverNow = Date.parse(headerValue(res.headers, 'Date') || '');
    var t = now();
    var lifetime = isNaN(expires) ? null : expires - (isNaN(serverNow) ? t : serverNow);
    session = {
      token: body.token,
      user: body.user || null,
      expiresAt: lifetime === null ? null : t + lifetime,
      renewAt: lifetime === null ? null : t + lifetime - Math.min(renewBefore, lifetime / 2),
      via: via,
      baseUrl: baseUrl,
    };
    store.save(session);
    return { token: body.token, expires_at: body.expires_at, user: body.user || null };
  }

  function wxLoginCode() {
    return new Promise(function (resolve, reject) {
      if (typeof api.login !== 'function') {
        reject(new GatewayError('login_failed', 'this platform has no wx.login: use devLogin or pass wx'));
        return;
      }
      api.login({
        success: function (res) {
          if (res && res.code) resolve(res.code);
          else reject(new GatewayError('login_failed', 'wx.login gave no code' + (res && res.errMsg ? ': ' + res.errMsg : '')));
        },
        fail: function (err) {
          reject(new GatewayError('login_failed', 'wx.login failed' + (err && err.errMsg ? ': ' + err.errMsg : ''),
            { cause: err }));
        },
      });
    });
  }

  /** Log in with wx.login; a code WeChat refused (used, expired) is replaced by a fresh one once. */
  function login() {
    var codeRetried = false;
    return withRetries(async function () {
      var code = await wxLoginCode();
      var res = await call('POST', '/v1/auth/wechat', { body: { code: code }, auth: false });
      return keep(res, { kind: 'wechat' });
    }, function (err, n) {
      if (err instanceof GatewayError && err.code === 'invalid_code' && !codeRetried) {
        codeRetried = true;
        return 0;
      }
      return retryDelay(err, n);
    });
  }

  /** Log in by name (POST /v1/auth/dev: only where the gateway runs with DEV_LOGIN=1). */
  function devLogin(user) {
    return withRetries(async function () {
      var res = await call('POST', '/v1/auth/dev', { body: { user: user }, auth: false });
      return keep(res, { kind: 'dev', user: user });
    });
  }

  /** Log in again the way the session was made (one login at a time, shared by concurrent calls). */
  function relogin(force) {
    if (!loginInFlight) {
      var via = session && session.via;
      var current = session;
      var p = via && via.kind === 'dev' ? devLogin(via.user) : login();
      loginInFlight = p.then(function (v) { loginInFlight = null; return v; }, function (err) {
        loginInFlight = null;
        // Renewing ahead of time failed but the token still works: keep using it.
        if (!force && current && session === current && current.expiresAt !== null && now() < current.expiresAt) {
          return null;
        }
        throw err;
      });
    }
    return loginInFlight;
  }

  async function ensureToken() {
    if (session && (session.renewAt === null || now() < session.renewAt)) return session.token;
    await relogin(false);
    return session.token;
  }

  function logout() {
    session = null;
    store.clear();
  }

  // ---- the API --------------------------------------------------------------------------

  async function workflows() {
    return field(await withRetries(function () { return call('GET', '/v1/workflows'); }), 'workflows');
  }

  async function upload(filePath, uploadOpts) {
    var o = uploadOpts || {};
    if (!o.contentType) {
      throw new GatewayError('invalid_params', 'upload: contentType is required (image/png, image/jpeg or image/webp)',
        { details: { content_type: 'required' } });
    }
    var body = { content_type: o.contentType };
    if (o.size !== undefined && o.size !== null) body.size = o.size;
    var form = field(await withRetries(function () { return call('POST', '/v1/uploads', { body: body }); }), 'upload');
    await withRetries(function () { return sendFile(form, filePath); });
    return form.id;
  }

  function sendFile(form, filePath) {
    return new Promise(function (resolve, reject) {
      try {
        api.uploadFile({
          url: form.url,
          filePath: filePath,
          name: form.file_field || 'file',
          formData: form.fields || {},
          timeout: uploadTimeout,
          success: function (res) {
            if (res.statusCode >= 200 && res.statusCode < 300) resolve();
            else reject(uploadTargetError(res.statusCode, res.data, now()));
          },
          fail: function (err) { reject(networkError(err)); },
        });
      } catch (e) {
        reject(networkError(e));
      }
    });
  }

  async function submit(workflow, params, submitOpts) {
    var o = submitOpts || {};
    var key = o.idempotencyKey || newIdempotencyKey();
    var body = { workflow: workflow, params: params || {} };
    if (o.inputs) body.inputs = o.inputs;
    if (o.notify === true) body.notify = true; // after wx.requestSubscribeMessage was accepted
    var res = await withRetries(function () {
      return call('POST', '/v1/jobs', { body: body, headers: { 'Idempotency-Key': key } });
    });
    return field(res, 'job');
  }

  async function job(jobId) {
    return field(await withRetries(function () { return call('GET', jobPath(jobId)); }), 'job');
  }

  async function result(jobId) {
    var res = await withRetries(function () { return call('GET', jobPath(jobId) + '/result'); });
    field(res, 'images');
    return res.data;
  }

  async function cancel(jobId) {
    var attempts = 0;
    try {
      var res = await withRetries(function (n) {
        attempts = n;
        return call('POST', jobPath(jobId) + '/cancel');
      });
      return field(res, 'job');
    } catch (err) {
      // A retry after a lost answer finds the job already cancelled by the first attempt.
      if (attempts > 0 && err instanceof GatewayError && err.code === 'job_finished') return job(jobId);
      throw err;
    }
  }

  async function jobs(listOpts) {
    var o = listOpts || {};
    var query = [];
    if (o.limit !== undefined && o.limit !== null) query.push('limit=' + encodeURIComponent(String(o.limit)));
    if (o.cursor) query.push('cursor=' + encodeURIComponent(String(o.cursor)));
    var path = '/v1/jobs' + (query.length ? '?' + query.join('&') : '');
    var res = await withRetries(function () { return call('GET', path); });
    field(res, 'jobs');
    return { jobs: res.data.jobs, next_cursor: res.data.next_cursor === undefined ? null : res.data.next_cursor };
  }

  /**
   * Poll a job until it is final: onUpdate(job) on every change, none for a 304.
   * Returns {stop(), done}; done resolves with the final job (or, after stop(), the last job seen or null)
   * and rejects with a GatewayError the polling cannot get past.
   */
  function watch(jobId, onUpdate, watchOpts) {
    var o = watchOpts || {};
    var signal = o.signal || null;
    var path = jobPath(jobId);
    var stopped = false;
    var hidden = false;
    var due = false; // a poll is owed since the app was hidden
    var inFlight = false;
    var timer = null;
    var etag = null;
    var last = null;
    var interval = 1000;
    var errors = 0;
    var settle;
    var done = new Promise(function (resolve, reject) { settle = { resolve: resolve, reject: reject }; });

    function onHide() {
      hidden = true;
      if (timer !== null) {
        clearTimer(timer);
        timer = null;
        due = true;
      }
    }
    function onShow() {
      if (!hidden) return;
      hidden = false;
      if (due && !stopped) {
        due = false;
        poll();
      }
    }
    function onAbort() { stop(); }

    function cleanup() {
      stopped = true;
      if (timer !== null) clearTimer(timer);
      timer = null;
      if (typeof api.offAppHide === 'function') api.offAppHide(onHide);
      if (typeof api.offAppShow === 'function') api.offAppShow(onShow);
      if (signal && typeof signal.removeEventListener === 'function') signal.removeEventListener('abort', onAbort);
    }
    function finish(value) {
      if (stopped) return;
      cleanup();
      settle.resolve(value);
    }
    function fail(err) {
      if (stopped) return;
      cleanup();
      settle.reject(err);
    }
    function stop() { finish(last); }

    function schedule(ms) {
      if (stopped) return;
      if (hidden) {
        due = true;
        return;
      }
      timer = setTimer(function () {
        timer = null;
        poll();
      }, ms);
    }

    function errorDelay(err) {
      if (!(err instanceof GatewayError)) return null;
      if (err.code === 'network_error') return backoff(errors);
      if (err.status === 429 || err.status === 503) {
        return err.retryAfter !== null ? err.retryAfter * 1000 : backoff(errors);
      }
      if (err.status >= 500) return backoff(errors);
      return null;
    }

    async function poll() {
      if (stopped || inFlight) return;
      inFlight = true;
      var res;
      try {
        res = await call('GET', path, { headers: etag ? { 'If-None-Match': etag } : {} });
      } catch (err) {
        inFlight = false;
        if (stopped) return;
        var wait = errorDelay(err);
        errors += 1;
        if (wait === null || errors > maxPollErrors) return fail(err);
        return schedule(wait);
      }
      inFlight = false;
      if (stopped) return;
      errors = 0;
      if (res.status === 304) return schedule(interval);
      var current;
      try {
        current = field(res, 'job');
      } catch (err) {
        return fail(err);
      }
      etag = headerValue(res.headers, 'ETag');
      last = current;
      if (typeof onUpdate === 'function') {
        try {
          onUpdate(current);
        } catch (err) {
          return fail(err);
        }
      }
      if (stopped) return; // onUpdate called stop()
      if (isFinal(current) || current.poll_after_ms === null) return finish(current);
      interval = typeof current.poll_after_ms === 'number' && current.poll_after_ms >= 0 ? current.poll_after_ms : 1000;
      schedule(interval);
    }

    if (signal && signal.aborted) {
      stop();
    } else {
      if (signal && typeof signal.addEventListener === 'function') signal.addEventListener('abort', onAbort);
      if (typeof api.onAppHide === 'function') api.onAppHide(onHide);
      if (typeof api.onAppShow === 'function') api.onAppShow(onShow);
      poll();
    }
    return { stop: stop, done: done };
  }

  return {
    login: login,
    devLogin: devLogin,
    logout: logout,
    user: function () { return session ? session.user : null; },
    upload: upload,
    submit: submit,
    job: job,
    watch: watch,
    result: result,
    cancel: cancel,
    jobs: jobs,
    workflows: workflows,
  };
}

module.exports = {
  createClient: createClient,
  GatewayError: GatewayError,
  isFinal: isFinal,
  newIdempotencyKey: newIdempotencyKey,
};
