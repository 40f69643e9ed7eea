'use strict';
// The client against a real running gateway, through a wx whose request/uploadFile do real HTTP.
//
//   GATEWAY_URL=http://127.0.0.1:8000 node --test clients/miniprogram/test/e2e.test.js
//
// The gateway needs DEV_LOGIN=1 and a ComfyUI (`bash scripts/dev.sh --fake-comfyui` gives both);
// tests/test_miniprogram_client.py starts one with the fake ComfyUI and runs this file.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');

const { createClient, GatewayError, newIdempotencyKey } = require('../index.js');

const WATCH_LIMIT_MS = 60 * 1000;
const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

// ---- a wx over node's http ------------------------------------------------------------------

function transport(url) {
  return new URL(url).protocol === 'https:' ? https : http;
}

/** Headers as the server spelled them (wx gives them so; the client must not care about case). */
function rawHeaders(res) {
  const out = {};
  for (let i = 0; i < res.rawHeaders.length; i += 2) out[res.rawHeaders[i]] = res.rawHeaders[i + 1];
  return out;
}

/** One HTTP exchange: resolves {statusCode, header, body: Buffer}; rejects {errMsg} like wx's fail. */
function exchange(url, { method = 'GET', headers = {}, body, timeout = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = transport(url).request(url, { method, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ statusCode: res.statusCode, header: rawHeaders(res), body: Buffer.concat(chunks) }));
      res.on('error', (e) => reject({ errMsg: 'request:fail ' + e.message }));
    });
    req.setTimeout(timeout, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => reject({ errMsg: 'request:fail ' + e.message }));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function realWx() {
  const storage = new Map();
  const requests = [];
  return {
    requests,
    request(opts) {
      requests.push({ method: opts.method, url: opts.url, header: { ...opts.header } });
      const headers = { ...opts.header };
      if (opts.data !== undefined) headers['Content-Length'] = Buffer.byteLength(opts.data);
      exchange(opts.url, { method: opts.method, headers, body: opts.data, timeout: opts.timeout }).then((res) => {
        let data = res.body.toString('utf8');
        if (opts.dataType === 'json') {
          try { data = JSON.parse(data); } catch (e) { /* wx hands over the text when it is not JSON */ }
        }
        opts.success({ statusCode: res.statusCode, data, header: res.header, errMsg: 'request:ok' });
      }, (err) => opts.fail(err));
    },
    /** multipart/form-data as wx.uploadFile sends it: formData fields, then the file under `name`. */
    uploadFile(opts) {
      let file;
      try {
        file = fs.readFileSync(opts.filePath);
      } catch (e) {
        opts.fail({ errMsg: 'uploadFile:fail ' + e.message });
        return;
      }
      const boundary = '----WxFormBoundary' + Math.random().toString(16).slice(2);
      const parts = [];
      for (const [name, value] of Object.entries(opts.formData || {})) {
        parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`));
      }
      const type = /\.png$/i.test(opts.filePath) ? 'image/png' : 'application/octet-stream';
      parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${opts.name}"; ` +
        `filename="${path.basename(opts.filePath)}"\r\nContent-Type: ${type}\r\n\r\n`));
      parts.push(file, Buffer.from(`\r\n--${boundary}--\r\n`));
      const body = Buffer.concat(parts);
      const headers = { ...(opts.header || {}), 'Content-Type': `multipart/form-data; boundary=${boundary}`,
        'Content-Length': body.length };
      exchange(opts.url, { method: 'POST', headers, body, timeout: opts.timeout }).then(
        (res) => opts.success({ statusCode: res.statusCode, data: res.body.toString('utf8'), errMsg: 'uploadFile:ok' }),
        (err) => opts.fail({ errMsg: String(err.errMsg).replace('request:', 'uploadFile:') }));
    },
    login(opts) { opts.fail({ errMsg: 'login:fail not in WeChat (the e2e test uses devLogin)' }); },
    getStorageSync(key) { return storage.has(key) ? storage.get(key) : ''; },
    setStorageSync(key, value) { storage.set(key, value); },
    removeStorageSync(key) { storage.delete(key); },
    storage,
  };
}

// ---- a real PNG --------------------------------------------------------------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let crc = 0xffffffff;
  for (const b of buf) crc = CRC_TABLE[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([head, body, crc]);
}

/** An RGB gradient PNG of width x height. */
function makePng(width, height) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) rows.set([x * 4 % 256, y * 4 % 256, 128], row + 1 + x * 3);
  }
  return Buffer.concat([PNG_MAGIC, pngChunk('IHDR', ihdr), pngChunk('IDAT', zlib.deflateSync(rows)), pngChunk('IEND', Buffer.alloc(0))]);
}

// ---- helpers -----------------------------------------------------------------------------------

/** Watch a job to its end within WATCH_LIMIT_MS; resolves {final, updates}. */
async function watchToEnd(gw, jobId) {
  const updates = [];
  const w = gw.watch(jobId, (job) => updates.push(job));
  let timer;
  const limit = new Promise((resolve, reject) => {
    timer = setTimeout(() => {
      w.stop();
      reject(new Error(`job ${jobId} not final after ${WATCH_LIMIT_MS} ms; last update: ${JSON.stringify(updates.at(-1))}`));
    }, WATCH_LIMIT_MS);
  });
  try {
    const final = await Promise.race([w.done, limit]);
    return { final, updates };
  } finally {
    clearTimeout(timer);
  }
}

test('the mini-program client against a running gateway', { timeout: 5 * 60 * 1000 }, async (t) => {
  const base = process.env.GATEWAY_URL;
  assert.ok(base, 'GATEWAY_URL is not set. This test needs a running gateway with DEV_LOGIN=1, e.g. ' +
    '`bash scripts/dev.sh --fake-comfyui` then `GATEWAY_URL=http://127.0.0.1:8000 node --test ' +
    'clients/miniprogram/test/e2e.test.js` (the unit tests, test/client.test.js, need no gateway).');

  const wx = realWx();
  const gw = createClient({ baseUrl: base, wx, maxRetries: 2 });
  const name = 'e2e-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 8);
  const ids = {};

  await t.test('devLogin keeps the token and sends it as a Bearer token', async () => {
    const answer = await gw.devLogin(name);
    assert.equal(typeof answer.token, 'string');
    assert.ok(Date.parse(answer.expires_at) > Date.now());
    assert.equal(typeof gw.user().id, 'string');
    assert.equal(JSON.parse(wx.storage.get('comfy-gateway:session')).token, answer.token);
  });

  await t.test('workflows lists txt2img and img2img, available', async () => {
    const list = await gw.workflows();
    const byName = Object.fromEntries(list.map((w) => [w.name, w]));
    assert.ok(byName.txt2img && byName.img2img, JSON.stringify(list.map((w) => w.name)));
    assert.equal(byName.txt2img.available, true);
    assert.ok(byName.img2img.inputs.image);
    assert.equal(wx.requests.at(-1).header.Authorization, `Bearer ${JSON.parse(wx.storage.get('comfy-gateway:session')).token}`);
  });

  await t.test('submit txt2img and watch it run to succeeded', async () => {
    const key = newIdempotencyKey();
    const job = await gw.submit('txt2img', { prompt: 'a cat', width: 64, height: 64, steps: 40, seed: 7 },
      { idempotencyKey: key });
    assert.ok(['queued', 'running'].includes(job.status), job.status);
    ids.txt2img = job.id;
    const { final, updates } = await watchToEnd(gw, job.id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final));
    assert.equal(final.poll_after_ms, null);
    assert.equal(final.progress.percent, 100);
    const running = updates.filter((u) => u.status === 'running');
    assert.ok(running.length >= 1, `no running update seen: ${updates.map((u) => u.status)}`);
    assert.ok(running.some((u) => u.progress.node_title), 'no node title while running');
    const percents = updates.map((u) => u.progress.percent);
    assert.deepEqual(percents, [...percents].sort((a, b) => a - b), 'progress went backwards');
    const polls = wx.requests.filter((r) => r.url.endsWith(`/v1/jobs/${job.id}`));
    assert.ok(polls.slice(1).every((r) => r.header['If-None-Match']), 'polls after the first carry If-None-Match');
    assert.ok(polls.length >= updates.length);

    const again = await gw.submit('txt2img', { prompt: 'a cat', width: 64, height: 64, steps: 40, seed: 7 },
      { idempotencyKey: key });
    assert.equal(again.id, job.id, 'the same Idempotency-Key gives the same job');
  });

  await t.test('result gives signed URLs of real PNGs', async () => {
    assert.ok(ids.txt2img, 'no job from the step before');
    const res = await gw.result(ids.txt2img);
    assert.equal(res.job_id, ids.txt2img);
    assert.ok(res.images.length >= 1);
    const image = res.images[0];
    assert.equal(image.content_type, 'image/png');
    const got = await exchange(image.url);
    assert.equal(got.statusCode, 200, got.body.toString('utf8', 0, 300));
    assert.deepEqual(got.body.subarray(0, 8), PNG_MAGIC);
    assert.equal(got.body.length, image.bytes);
  });

  await t.test('upload a PNG, then img2img with it', async () => {
    const png = makePng(64, 48);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gw-e2e-')), 'input.png');
    fs.writeFileSync(file, png);
    const uploadId = await gw.upload(file, { contentType: 'image/png', size: png.length });
    assert.equal(typeof uploadId, 'string');
    const job = await gw.submit('img2img', { prompt: 'a painting', steps: 3, seed: 1 }, { inputs: { image: uploadId } });
    ids.img2img = job.id;
    const { final } = await watchToEnd(gw, job.id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final));
    const res = await gw.result(job.id);
    assert.ok(res.images.length >= 1);
  });

  await t.test('an image larger than declared is refused with a GatewayError', async () => {
    const png = makePng(8, 8);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gw-e2e-')), 'larger.png');
    fs.writeFileSync(file, png);
    let err = await gw.upload(file, { contentType: 'image/png', size: png.length - 10 }).catch((e) => e);
    if (typeof err === 'string') {
      // The storage took it (s3rver does not check a presigned POST's size range; S3 and the
      // gateway's local upload target do): the gateway refuses it at submit.
      err = await gw.submit('img2img', { prompt: 'x', steps: 3 }, { inputs: { image: err } }).catch((e) => e);
    }
    assert.ok(err instanceof GatewayError, String(err));
    assert.ok(err.status >= 400 && err.status < 500, `${err.status} ${err.code}`);
    assert.ok(['invalid_upload', 'payload_too_large'].includes(err.code), err.code);
  });

  await t.test('cancel a job: it ends cancelled', async () => {
    const job = await gw.submit('txt2img', { prompt: 'a long one', width: 64, height: 64, steps: 60, seed: 3 });
    ids.cancelled = job.id;
    const answer = await gw.cancel(job.id);
    assert.equal(answer.id, job.id);
    const { final } = await watchToEnd(gw, job.id);
    assert.equal(final.status, 'cancelled', JSON.stringify(final));
    const err = await gw.result(job.id).catch((e) => e);
    assert.equal(err.code, 'job_cancelled');
    assert.equal(err.status, 409);
  });

  await t.test('jobs lists them, newest first, and pages with next_cursor', async () => {
    const page = await gw.jobs({ limit: 10 });
    const mine = page.jobs.map((j) => j.id).filter((id) => Object.values(ids).includes(id));
    assert.deepEqual(mine, [ids.cancelled, ids.img2img, ids.txt2img]);
    const first = await gw.jobs({ limit: 1 });
    assert.equal(first.jobs.length, 1);
    assert.ok(first.next_cursor);
    const second = await gw.jobs({ limit: 1, cursor: first.next_cursor });
    assert.notEqual(second.jobs[0].id, first.jobs[0].id);
  });

  await t.test('errors come as GatewayError in the contract\'s shape', async () => {
    const err = await gw.job('00000000-0000-4000-8000-000000000000').catch((e) => e);
    assert.ok(err instanceof GatewayError);
    assert.deepEqual([err.code, err.status], ['not_found', 404]);
    assert.equal(typeof err.message, 'string');
    const bad = await gw.submit('txt2img', { prompt: 'x', width: 65 }).catch((e) => e);
    assert.equal(bad.code, 'invalid_params');
    assert.equal(bad.status, 400);
    assert.ok(bad.details && bad.details.width, JSON.stringify(bad.details));
  });
});
