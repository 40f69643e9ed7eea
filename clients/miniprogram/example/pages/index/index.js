const { GatewayError } = require('../../utils/gateway.js');

const app = getApp();

/** A sentence for the user from a GatewayError (see the README's table of codes). */
function explain(err) {
  if (!(err instanceof GatewayError)) return String(err && err.message || err);
  switch (err.code) {
    case 'network_error': return 'No connection. Check the network and try again.';
    case 'rate_limited':
    case 'too_many_active_jobs': return 'Busy: try again in ' + (err.retryAfter || 10) + ' s.';
    case 'quota_exceeded': return 'You have used today\'s quota.';
    case 'backend_unavailable':
    case 'storage_unavailable':
    case 'database_unavailable': return 'The service is unavailable right now. Try again shortly.';
    case 'invalid_params': return 'Check the settings: ' + err.message;
    case 'invalid_upload':
    case 'payload_too_large': return 'This picture cannot be used: ' + err.message;
    case 'content_rejected': return 'The content check refused this. Change the prompt and try again.';
    default: return err.message;
  }
}

Page({
  data: {
    workflows: [],
    names: [],
    index: 0,
    prompt: 'a cat sitting on a windowsill, watercolor',
    needsImage: false,
    imagePath: '',
    imageSize: 0,
    job: null,
    active: false,
    images: [],
    error: '',
  },

  async onLoad() {
    try {
      await app.ready;
      const workflows = (await app.gateway.workflows()).filter((w) => w.available !== false);
      this.setData({ workflows, names: workflows.map((w) => w.title || w.name) });
      this.selectWorkflow(0);
    } catch (err) {
      this.setData({ error: explain(err) });
    }
  },

  onUnload() {
    // Leaving the page ends polling; the job goes on and can be watched again later.
    if (this.watcher) this.watcher.stop();
  },

  selectWorkflow(index) {
    const workflow = this.data.workflows[index];
    const inputs = (workflow && workflow.inputs) || {};
    this.setData({ index, needsImage: Object.keys(inputs).some((k) => inputs[k].required) });
  },

  onPick(e) { this.selectWorkflow(Number(e.detail.value)); },

  onPrompt(e) { this.setData({ prompt: e.detail.value }); },

  onChooseImage() {
    wx.chooseMedia({
      count: 1,
      mediaType: ['image'],
      sizeType: ['compressed'],
      success: (res) => {
        const file = res.tempFiles[0];
        this.setData({ imagePath: file.tempFilePath, imageSize: file.size });
      },
    });
  },

  async onSubmit() {
    const workflow = this.data.workflows[this.data.index];
    if (!workflow || this.data.active) return;
    this.setData({ error: '', images: [], job: null, active: true });
    try {
      const options = {};
      if (this.data.needsImage) {
        if (!this.data.imagePath) throw new Error('Choose a picture first.');
        const path = this.data.imagePath;
        const type = /\.png$/i.test(path) ? 'image/png' : /\.webp$/i.test(path) ? 'image/webp' : 'image/jpeg';
        const uploadId = await app.gateway.upload(path, { contentType: type, size: this.data.imageSize });
        options.inputs = { image: uploadId };
      }
      const job = await app.gateway.submit(workflow.name, { prompt: this.data.prompt }, options);
      this.show(job);
      this.watcher = app.gateway.watch(job.id, (j) => this.show(j));
      const final = await this.watcher.done;
      this.watcher = null;
      if (final && final.status === 'succeeded') {
        const result = await app.gateway.result(final.id);
        this.setData({ images: result.images.map((i) => i.url) });
      } else if (final && final.status === 'failed') {
        this.setData({ error: 'Failed: ' + final.error.message });
      }
    } catch (err) {
      this.setData({ error: explain(err) });
    }
    this.setData({ active: false });
  },

  async onCancel() {
    const job = this.data.job;
    if (!job) return;
    try {
      this.show(await app.gateway.cancel(job.id)); // the watch sees `cancelled` and ends
    } catch (err) {
      if (!(err instanceof GatewayError && err.code === 'job_finished')) this.setData({ error: explain(err) });
    }
  },

  onPreviewResult(e) {
    wx.previewImage({ urls: this.data.images, current: e.currentTarget.dataset.url });
  },

  show(job) {
    const p = job.progress || {};
    this.setData({
      job,
      view: {
        status: job.status,
        queue: job.queue_position === null ? '' : job.queue_position === 0 ? 'next in line' : job.queue_position + ' ahead',
        eta: job.eta_seconds === null ? '' : 'about ' + Math.ceil(job.eta_seconds) + ' s',
        percent: Math.round(p.percent || 0),
        step: p.node_title ? p.node_title + (p.max ? ' ' + p.value + '/' + p.max : '') : '',
        preview: job.preview_url || '',
        cancellable: job.status === 'queued' || job.status === 'running',
      },
    });
  },
});
