/* comfy-gateway demo page, the job panel: one job polled and shown (queue, ETA, progress, the
 * preview's reveal, the result, cancel), and the list of my jobs. See api.js for the layout.
 */
(() => {
  'use strict';

  const D = window.Demo;
  const { $, state, api, call, retryAfterMs, errorText, el, seconds, duration, note } = D;
  const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const ACTIVE = new Set(['queued', 'running']);
  const MAX_BLUR_PX = 16;

  // ------------------------------------------------------------------ one job: poll and show

  function stopWatching() {
    if (state.watch) clearTimeout(state.watch.timer);
    state.watch = null;
  }

  function watchJob(job) {
    stopWatching();
    const w = { id: job.id, job: null, etag: null, timer: 0, attempt: 0, previewSeq: 0, previewUrl: null,
                resultLoading: false, cancelling: false };
    state.watch = w;
    resetStage(job);
    $('job-panel').hidden = false;
    applyJob(w, job);
    if (!FINAL.has(job.status)) schedulePoll(w, job.poll_after_ms);
    renderJobs();
  }

  function schedulePoll(w, ms) {
    clearTimeout(w.timer);
    w.timer = setTimeout(() => poll(w), ms == null ? 1000 : Math.max(ms, 0));
  }

  async function poll(w) {
    if (state.watch !== w) return;
    const headers = w.etag ? { 'If-None-Match': w.etag } : {};
    let r;
    try {
      r = await api('GET', `/v1/jobs/${encodeURIComponent(w.id)}`, { headers });
    } catch (e) {
      if (state.watch !== w) return;
      w.attempt += 1;
      const ms = retryAfterMs(null, w.attempt);
      note(`The network failed; polling again in ${seconds(ms)}`);
      schedulePoll(w, ms);
      return;
    }
    if (state.watch !== w) return;
    if (r.status === 304) { // unchanged: wait as the last answer said
      w.attempt = 0;
      schedulePoll(w, w.job.poll_after_ms);
      return;
    }
    if (r.status === 200) {
      w.attempt = 0;
      w.etag = r.headers.get('ETag');
      note('');
      applyJob(w, r.data.job);
      if (!FINAL.has(r.data.job.status)) schedulePoll(w, r.data.job.poll_after_ms);
      return;
    }
    if (r.status === 429 || r.status >= 500) { // 503 and 429 say when (Retry-After); others back off
      w.attempt += 1;
      const ms = retryAfterMs(r.headers, w.attempt);
      note(`${errorText(r)}: polling again in ${seconds(ms)}`);
      schedulePoll(w, ms);
      return;
    }
    if (r.status === 401) { D.expired(); return; }
    $('job-error').textContent = errorText(r);
  }

  function blurFor(percent) { return MAX_BLUR_PX * (1 - Math.min(Math.max(percent, 0), 100) / 100); }

  function applyJob(w, job) {
    const wasFinal = FINAL.has((w.job || job).status); // (a job shown final from the start needs no refresh)
    w.job = job;
    const status = job.status;
    $('job-panel').dataset.status = status;
    $('job-status').textContent = status;
    $('job-status').className = `badge ${status}`;
    $('job-id').textContent = `${job.workflow} · ${job.id}`;
    const cancel = $('cancel');
    cancel.hidden = !ACTIVE.has(status);
    cancel.disabled = w.cancelling;
    cancel.textContent = w.cancelling ? 'Cancelling…' : 'Cancel';

    const eta = job.eta_seconds != null ? ` · about ${duration(job.eta_seconds)} left` : '';
    let queue = '';
    if (status === 'queued') {
      const n = job.queue_position;
      const where = n == null ? '' : n === 0 ? ' · next up' : ` · ${n} job${n === 1 ? '' : 's'} ahead`;
      queue = `Queued${where}${eta}`;
    } else if (status === 'running') {
      queue = 'Running' + eta;
    } else if (status === 'succeeded') {
      const took = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
      queue = Number.isFinite(took) ? `Done in ${duration(took)}` : 'Done';
    } else if (status === 'failed') {
      queue = 'Failed';
    } else if (status === 'cancelled') {
      queue = 'Cancelled';
    }
    $('job-queue').textContent = queue;
    $('job-queue').dataset.queuePosition = job.queue_position == null ? '' : String(job.queue_position);

    const p = job.progress || {};
    const percent = status === 'succeeded' ? 100 : Math.max(Number(p.percent) || 0, 0);
    const bar = $('progress-bar');
    bar.style.width = `${percent}%`;
    bar.dataset.percent = String(percent);
    $('progress').setAttribute('aria-valuenow', String(Math.round(percent)));
    let label = '';
    if (status === 'running') {
      const node = p.node_title || p.node || 'starting';
      label = `${node}${p.max ? ` · step ${p.value}/${p.max}` : ''} · ${percent.toFixed(0)}%`;
    } else if (status === 'queued') {
      label = 'Waiting for a ComfyUI server';
    }
    $('progress-label').textContent = label;

    const preview = $('preview');
    if (!w.resultLoading) {
      const blur = blurFor(percent);
      preview.style.filter = `blur(${blur.toFixed(1)}px)`;
      preview.dataset.blur = blur.toFixed(1);
    }
    if (job.preview_url && job.preview_url !== w.previewUrl) loadPreview(w, job.preview_url);

    if (status === 'succeeded' && !w.resultLoading) showResult(w);
    if (status === 'failed' && job.error) {
      const where = job.error.node_type ? ` (node ${job.error.node_id} ${job.error.node_type})` : '';
      $('job-error').textContent = `${job.error.code}: ${job.error.message}${where}`;
      $('stage-empty').textContent = 'The job failed.';
    }
    if (status === 'cancelled') $('stage-empty').textContent = 'Cancelled.';
    if (status === 'queued' && !w.previewUrl) $('stage-empty').textContent = 'Waiting in the queue…';
    if (status === 'running' && !w.previewUrl) $('stage-empty').textContent = 'Waiting for the first preview…';

    mergeIntoList(job);
    if (FINAL.has(status)) clearTimeout(w.timer); // final: never changes again (e.g. a cancel's answer)
    if (FINAL.has(status) && !wasFinal) refreshJobs();
  }

  /** Show a new preview frame once it has loaded (no blank flash), never an older one over a newer. */
  function loadPreview(w, url) {
    w.previewUrl = url;
    const seq = ++w.previewSeq;
    const img = new Image();
    img.src = url;
    img.decode().then(() => {
      if (state.watch !== w || seq !== w.previewSeq || w.resultLoading) return;
      const preview = $('preview');
      preview.src = url;
      preview.hidden = false;
      $('stage-empty').hidden = true;
    }).catch(() => { /* a frame that failed to load: the next poll brings another */ });
  }

  async function showResult(w) {
    w.resultLoading = true;
    let r;
    try {
      r = await call('GET', `/v1/jobs/${encodeURIComponent(w.id)}/result`, {}, { retries: 5, what: 'Result' });
    } catch (e) {
      if (state.watch === w) $('job-error').textContent = e.message;
      return;
    }
    if (state.watch !== w) return;
    if (r.status !== 200) { $('job-error').textContent = errorText(r); return; }
    const images = r.data.images || [];
    if (!images.length) { $('stage-empty').textContent = 'The job saved no image.'; return; }
    const first = images[0];
    if (first.width && first.height) $('stage').style.aspectRatio = `${first.width} / ${first.height}`;
    await showImage(w, images, 0);
    if (images.length > 1) {
      $('thumbs').replaceChildren(...images.map((image, i) => el('img', {
        src: image.url, alt: `image ${i + 1}`, class: i === 0 ? 'current' : '',
        onclick: () => showImage(w, images, i),
      })));
    }
  }

  /** The reveal's last step: the preview sharpens fully while the result fades in over it. */
  async function showImage(w, images, index) {
    const url = images[index].url;
    const img = new Image();
    img.src = url;
    try {
      await img.decode();
    } catch (_) {
      if (state.watch === w) $('job-error').textContent = 'The image could not be loaded.';
      return;
    }
    if (state.watch !== w) return;
    const result = $('result');
    const preview = $('preview');
    result.classList.remove('shown');
    result.src = url;
    result.hidden = false;
    $('stage-empty').hidden = true;
    void result.offsetWidth; // start the transition from opacity 0
    result.classList.add('shown');
    preview.style.filter = 'blur(0px)';
    preview.dataset.blur = '0.0';
    preview.classList.add('gone');
    for (const [i, thumb] of [...$('thumbs').children].entries()) thumb.classList.toggle('current', i === index);
  }

  function resetStage(job) {
    const preview = $('preview');
    const result = $('result');
    preview.hidden = true;
    preview.removeAttribute('src');
    preview.classList.remove('gone');
    preview.style.filter = `blur(${MAX_BLUR_PX}px)`;
    preview.dataset.blur = '';
    result.hidden = true;
    result.removeAttribute('src');
    result.classList.remove('shown');
    $('thumbs').replaceChildren();
    $('job-error').textContent = '';
    $('stage-empty').hidden = false;
    $('stage-empty').textContent = 'Waiting for the first preview…';
    const params = job.params || {};
    const stage = $('stage');
    stage.style.aspectRatio = params.width && params.height ? `${params.width} / ${params.height}` : '1 / 1';
    const bits = [];
    if (typeof params.prompt === 'string') {
      bits.push(`“${params.prompt.length > 80 ? params.prompt.slice(0, 79) + '…' : params.prompt}”`);
    }
    if (params.width && params.height) bits.push(`${params.width}×${params.height}`);
    if (params.steps) bits.push(`${params.steps} steps`);
    if (params.seed != null) bits.push(`seed ${params.seed}`);
    $('job-params').textContent = bits.join(' · ');
  }

  async function cancelJob(id) {
    const w = state.watch && state.watch.id === id ? state.watch : null;
    if (w) { w.cancelling = true; applyJob(w, w.job); }
    try {
      const r = await call('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`, {},
                           { retries: 3, retryOn: [503], what: 'Cancel' });
      if (r.status === 202) {
        // A running job is cancelled when ComfyUI confirms: keep polling until it says so.
        if (w && state.watch === w) applyJob(w, r.data.job);
        else mergeIntoList(r.data.job);
      } else {
        note(errorText(r));
        if (w) { w.cancelling = false; applyJob(w, w.job); }
      }
    } catch (e) {
      note(e.message);
      if (w) { w.cancelling = false; applyJob(w, w.job); }
    }
    refreshJobs();
  }

  // ------------------------------------------------------------------ my jobs

  async function refreshJobs({ more = false } = {}) {
    if (!state.token) return;
    clearTimeout(state.jobsTimer);
    const seq = ++state.jobsSeq;
    const limit = more ? 10 : Math.min(Math.max(state.jobs.length, 10), 100);
    const cursor = more && state.jobsCursor ? `&cursor=${encodeURIComponent(state.jobsCursor)}` : '';
    let r;
    try {
      r = await api('GET', `/v1/jobs?limit=${limit}${cursor}`);
    } catch (e) {
      if (seq === state.jobsSeq) state.jobsTimer = setTimeout(refreshJobs, 5000);
      return;
    }
    if (seq !== state.jobsSeq || !state.token) return;
    if (r.status === 401) { D.expired(); return; }
    if (r.status !== 200) { // 429/503: come back when Retry-After says
      state.jobsTimer = setTimeout(refreshJobs, retryAfterMs(r.headers, 3));
      return;
    }
    state.jobs = more ? state.jobs.concat(r.data.jobs) : r.data.jobs;
    state.jobsCursor = r.data.next_cursor;
    renderJobs();
    // Jobs other than the one shown change too: look again while any of them is active.
    const waits = state.jobs.filter((j) => ACTIVE.has(j.status) && !(state.watch && state.watch.id === j.id))
      .map((j) => j.poll_after_ms || 1000);
    if (waits.length) state.jobsTimer = setTimeout(refreshJobs, Math.max(2000, Math.min(...waits)));
  }

  function mergeIntoList(job) {
    const i = state.jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) state.jobs[i] = job;
    else state.jobs.unshift(job);
    renderJobs();
  }

  function renderJobs() {
    const current = state.watch ? state.watch.id : null;
    $('jobs').replaceChildren(...state.jobs.map((job) => {
      if (current === job.id && state.watch.job) job = state.watch.job;
      const prompt = job.params && typeof job.params.prompt === 'string' ? job.params.prompt : '';
      const when = job.status === 'running'
        ? `${Math.round((job.progress && job.progress.percent) || 0)}%`
        : new Date(job.created_at).toLocaleTimeString();
      return el('li', { 'data-job-id': job.id, 'data-status': job.status, class: job.id === current ? 'current' : '',
                        onclick: () => { if (!state.watch || state.watch.id !== job.id) watchJob(job); } },
        el('span', { class: `badge ${job.status}`, text: job.status }),
        el('span', { class: 'what' }, el('b', { text: job.workflow }), el('span', { class: 'prompt', text: prompt })),
        el('span', { class: 'when', text: when }),
        ACTIVE.has(job.status)
          ? el('button', { type: 'button', class: 'danger', text: 'Cancel',
                           onclick: (ev) => { ev.stopPropagation(); cancelJob(job.id); } })
          : null);
    }));
    $('jobs-empty').hidden = state.jobs.length > 0;
    $('more-jobs').hidden = !state.jobsCursor;
  }

  Object.assign(D, { stopWatching, watchJob, cancelJob, refreshJobs, renderJobs });
})();
