/* comfy-gateway demo page, the form: the workflows, the form built from a workflow's params,
 * its checks, the uploads of its images, and the submit. See api.js for the layout.
 */
(() => {
  'use strict';

  const D = window.Demo;
  const { $, state, call, retryAfterMs, errorText, newKey, el, seconds, humanize, watchJob, refreshJobs } = D;
  const UPLOAD_TYPES = ['image/png', 'image/jpeg', 'image/webp'];

  // ------------------------------------------------------------------ workflows and the form

  async function loadWorkflows() {
    clearTimeout(state.workflowsTimer);
    let r;
    try {
      r = await call('GET', '/v1/workflows', {}, { retries: 6, what: 'Loading the workflows' });
    } catch (e) {
      $('form-error').textContent = e.message;
      return;
    }
    if (r.status !== 200) { $('form-error').textContent = errorText(r); return; }
    state.workflows = r.data.workflows;
    const select = $('workflow');
    const current = state.workflow ? state.workflow.name : select.value;
    select.replaceChildren(...state.workflows.map((wf) => el('option', {
      value: wf.name, text: wf.available === false ? `${wf.title} (unavailable)` : wf.title,
    })));
    const chosen = state.workflows.find((wf) => wf.name === current) || state.workflows[0];
    if (chosen) {
      select.value = chosen.name;
      selectWorkflow(chosen.name);
    }
    // A workflow no server can run now may become available (a server connects): look again later.
    if (state.workflows.some((wf) => wf.available === false)) {
      state.workflowsTimer = setTimeout(loadWorkflows, 15000);
    }
  }

  function selectWorkflow(name) {
    const wf = state.workflows.find((w) => w.name === name);
    if (!wf) return;
    const keep = state.workflow && state.workflow.name === name ? readRawValues() : {};
    state.workflow = wf;
    $('workflow-description').textContent = wf.description || '';
    $('workflow-unavailable').hidden = wf.available !== false;
    $('submit').disabled = wf.available === false || Boolean(state.cooldownTimer);
    const strings = [];
    const others = [];
    for (const [param, spec] of Object.entries(wf.params)) {
      const field = paramField(param, spec, keep[param]);
      (spec.type === 'string' && !spec.enum ? strings : others).push(field);
    }
    const inputs = Object.entries(wf.inputs || {}).map(([input, spec]) => inputField(input, spec));
    $('fields').replaceChildren(...inputs, ...strings, el('div', { class: 'grid2' }, ...others));
    $('form-error').textContent = '';
  }

  function readRawValues() {
    const values = {};
    for (const node of $('fields').querySelectorAll('[data-param]')) {
      values[node.dataset.param] = node.type === 'checkbox' ? node.checked : node.value;
    }
    return values;
  }

  function limitsText(spec) {
    const parts = [];
    if (spec.minimum != null && spec.maximum != null) parts.push(`${spec.minimum}–${spec.maximum}`);
    else if (spec.minimum != null) parts.push(`at least ${spec.minimum}`);
    else if (spec.maximum != null) parts.push(`at most ${spec.maximum}`);
    if (spec.multiple_of != null) parts.push(`multiple of ${spec.multiple_of}`);
    return parts.join(', ');
  }

  function paramField(name, spec, kept) {
    const id = `param-${name}`;
    const value = kept !== undefined ? kept : spec.default;
    const common = { id, 'data-param': name, 'data-type': spec.type, name, required: spec.required };
    let control;
    if (spec.type === 'boolean') {
      control = el('input', { ...common, type: 'checkbox' });
      control.checked = Boolean(value);
      return el('label', { class: 'field check', 'data-field': name }, control,
                el('span', { class: 'label', text: spec.label || humanize(name) }),
                el('span', { class: 'field-error' }));
    }
    if (Array.isArray(spec.enum)) {
      const options = spec.enum.map((choice) => el('option', { value: String(choice), text: String(choice) }));
      if (!spec.required && spec.default == null) options.unshift(el('option', { value: '', text: '(default)' }));
      control = el('select', common, ...options);
      if (value != null && spec.enum.map(String).includes(String(value))) control.value = String(value);
    } else if (spec.type === 'integer' || spec.type === 'number') {
      control = el('input', {
        ...common, type: 'number', inputmode: spec.type === 'integer' ? 'numeric' : 'decimal',
        min: spec.minimum, max: spec.maximum,
        step: spec.multiple_of || (spec.type === 'integer' ? 1 : 'any'),
        placeholder: spec.random_default ? 'random' : undefined,
      });
      if (value != null) control.value = String(value);
    } else if (spec.max_length == null || spec.max_length > 200) {
      control = el('textarea', { ...common, maxlength: spec.max_length, rows: spec.required ? 3 : 2 });
      if (value != null) control.value = String(value);
    } else {
      control = el('input', { ...common, type: 'text', maxlength: spec.max_length });
      if (value != null) control.value = String(value);
    }
    const hint = [spec.description, limitsText(spec)].filter(Boolean).join(' · ');
    return el('label', { class: 'field', 'data-field': name, for: id },
              el('span', { class: 'label' }, spec.label || humanize(name),
                 spec.required ? el('span', { class: 'req', text: '*' }) : null),
              control,
              hint ? el('span', { class: 'hint', text: hint }) : null,
              el('span', { class: 'field-error' }));
  }

  function inputField(name, spec) {
    const id = `input-${name}`;
    return el('label', { class: 'field', 'data-field': name, for: id },
              el('span', { class: 'label' }, spec.label || humanize(name),
                 spec.required ? el('span', { class: 'req', text: '*' }) : null),
              el('input', { id, type: 'file', accept: UPLOAD_TYPES.join(','), 'data-input': name,
                            required: spec.required }),
              spec.description ? el('span', { class: 'hint', text: spec.description }) : null,
              el('span', { class: 'field-error' }));
  }

  /** What is wrong with a value by the param's rules, or null. */
  function checkValue(spec, value) {
    if (typeof value === 'string') {
      return spec.max_length != null && value.length > spec.max_length
        ? `must be at most ${spec.max_length} characters` : null;
    }
    if (!Number.isFinite(value)) return 'must be a number';
    if (spec.type === 'integer' && !Number.isInteger(value)) return 'must be a whole number';
    if (spec.minimum != null && value < spec.minimum) return `must be at least ${spec.minimum}`;
    if (spec.maximum != null && value > spec.maximum) return `must be at most ${spec.maximum}`;
    if (spec.multiple_of && value % spec.multiple_of !== 0) return `must be a multiple of ${spec.multiple_of}`;
    return null;
  }

  /** The params to send, checked against the workflow's rules (the server checks them again). */
  function readParams(wf) {
    const params = {};
    const errors = {};
    for (const [name, spec] of Object.entries(wf.params)) {
      const control = $('fields').querySelector(`[data-param="${CSS.escape(name)}"]`);
      if (!control) continue;
      if (spec.type === 'boolean') { params[name] = control.checked; continue; }
      const raw = control.value;
      if (raw.trim() === '') {
        if (spec.required) errors[name] = 'required';
        continue; // the server fills in the default (or a random seed)
      }
      const value = spec.type === 'integer' || spec.type === 'number' ? Number(raw) : raw;
      const problem = checkValue(spec, value);
      if (problem) errors[name] = problem;
      else params[name] = value;
    }
    for (const [name, spec] of Object.entries(wf.inputs || {})) {
      const control = $('fields').querySelector(`[data-input="${CSS.escape(name)}"]`);
      const file = control && control.files[0];
      if (!file && spec.required) errors[name] = 'choose an image';
      else if (file && !UPLOAD_TYPES.includes(file.type)) errors[name] = 'must be a PNG, JPEG or WebP image';
    }
    return { params, errors };
  }

  function showFieldErrors(errors) {
    for (const node of $('fields').querySelectorAll('[data-field]')) {
      const message = errors[node.dataset.field] || '';
      node.classList.toggle('invalid', Boolean(message));
      node.querySelector('.field-error').textContent = message;
    }
  }

  /** Send each chosen image as the presigned form says (what wx.uploadFile does); their upload ids. */
  async function uploadInputs(wf) {
    const ids = {};
    for (const name of Object.keys(wf.inputs || {})) {
      const control = $('fields').querySelector(`[data-input="${CSS.escape(name)}"]`);
      const file = control && control.files[0];
      if (!file) continue;
      $('submit-note').textContent = `Uploading ${file.name}…`;
      const r = await call('POST', '/v1/uploads', { body: { content_type: file.type, size: file.size } },
                           { retryOn: [503], what: 'Upload' });
      if (r.status !== 201) throw new Error(`${name}: ${errorText(r)}`);
      const upload = r.data.upload;
      const form = new FormData();
      for (const [k, v] of Object.entries(upload.fields)) form.append(k, v);
      form.append(upload.file_field, file);
      const sent = await fetch(upload.url, { method: 'POST', body: form });
      if (!sent.ok) throw new Error(`${name}: the upload was refused (HTTP ${sent.status})`);
      ids[name] = upload.id;
    }
    return ids;
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    const wf = state.workflow;
    if (!wf) return;
    $('form-error').textContent = '';
    const { params, errors } = readParams(wf);
    showFieldErrors(errors);
    if (Object.keys(errors).length) { $('form-error').textContent = 'Check the highlighted fields.'; return; }
    $('submit').disabled = true;
    try {
      const inputs = await uploadInputs(wf);
      const body = { workflow: wf.name, params };
      if (Object.keys(inputs).length) body.inputs = inputs;
      $('submit-note').textContent = 'Submitting…';
      // One key per submit: a retry (503, network) sends the same key, so it can never make two jobs.
      const r = await call('POST', '/v1/jobs', { body, headers: { 'Idempotency-Key': newKey() } },
                           { retries: 3, retryOn: [503], what: 'Submit' });
      if (r.status === 202 || r.status === 200) {
        watchJob(r.data.job);
        refreshJobs();
        // One column (a phone): the job panel is below the form, bring it into view.
        if (window.matchMedia('(max-width: 879px)').matches) $('job-panel').scrollIntoView({ behavior: 'smooth' });
      } else if (r.status === 429) {
        cooldown(retryAfterMs(r.headers, 1), errorText(r));
        return;
      } else {
        const details = (r.data && r.data.error && r.data.error.details) || {};
        showFieldErrors(typeof details === 'object' ? details : {});
        $('form-error').textContent = errorText(r);
      }
    } catch (e) {
      $('form-error').textContent = e.message;
    } finally {
      $('submit-note').textContent = '';
      if (!state.cooldownTimer) $('submit').disabled = wf.available === false;
    }
  }

  /** After a 429 (rate limit, quota, too many active jobs): no submit until Retry-After has passed. */
  function cooldown(ms, message) {
    const until = Date.now() + ms;
    $('form-error').textContent = message;
    $('submit').disabled = true;
    const tick = () => {
      const left = until - Date.now();
      if (left <= 0) {
        state.cooldownTimer = 0;
        $('submit-note').textContent = '';
        $('submit').disabled = state.workflow && state.workflow.available === false;
        return;
      }
      $('submit-note').textContent = `Try again in ${seconds(left)}`;
      state.cooldownTimer = setTimeout(tick, 500);
    };
    clearTimeout(state.cooldownTimer);
    tick();
  }

  Object.assign(D, { loadWorkflows, selectWorkflow, onSubmit });
})();
