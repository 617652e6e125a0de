// ldm-serve playground: calls the native API (/v1/...) from the page; no framework, no build.
// The API key and this browser's jobs live in localStorage; images are fetched with the key and
// shown through blob: URLs; progress comes from the job's server-sent events, read with fetch()
// (EventSource cannot send an Authorization header).
'use strict';

const KEY_STORE = 'ldm-serve.apiKey';
const JOBS_STORE = 'ldm-serve.jobs';
const MAX_JOBS = 50; // gallery entries kept, newest first
const $ = (id) => document.getElementById(id);
const form = $('generate');
const field = (name) => form.elements.namedItem(name);
const state = { current: null, init: null, painted: false, jobs: loadJobs(), cards: new Map() };

function el(tag, text) {
  const element = document.createElement(tag);
  if (text != null) element.textContent = text;
  return element;
}

// ---- API ----------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const key = $('api-key').value.trim();
  if (key) headers.set('Authorization', `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await problem(response);
  return response;
}

// An Error from an error response: application/problem+json's title, detail and field errors.
async function problem(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON */ }
  const error = new Error(body.detail || response.statusText || 'request failed');
  error.title = `${response.status} ${body.title || response.statusText}`;
  error.fields = Array.isArray(body.errors) ? body.errors : [];
  return error;
}

function fieldError(name, message) {
  const fields = [{ field: name, message }];
  return Object.assign(new Error(message), { title: 'Check the form', fields });
}

// A job's server-sent events, parsed from the fetch() body: onEvent(name, data) per event.
// Events end with a blank line; `event:` names one, `data:` lines carry it, `:` is a comment.
async function readEvents(jobId, onEvent) {
  const headers = { Accept: 'text/event-stream' };
  const response = await api(`/v1/jobs/${jobId}/events`, { headers });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    const blocks = (buffer + chunk.value.replace(/\r\n?/g, '\n')).split('\n\n');
    buffer = blocks.pop(); // the unfinished rest
    for (const block of blocks) {
      const name = /^event: ?(.*)$/m.exec(block)?.[1] ?? 'message';
      const data = [...block.matchAll(/^data: ?(.*)$/gm)].map((match) => match[1]);
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

// ---- Errors and progress ------------------------------------------------------------------
function showError(error) {
  const box = $('error');
  box.replaceChildren(el('strong', error.title || 'Error'), el('p', error.message));
  const list = el('ul');
  for (const { field: name, message } of error.fields || []) {
    list.append(el('li', `${name}: ${message}`));
    if (field(name)) field(name).classList.add('invalid');
  }
  if (list.children.length) box.append(list);
  box.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  for (const element of form.querySelectorAll('.invalid')) element.classList.remove('invalid');
}

const terminal = (status) => !['queued', 'running'].includes(status);

function describe({ status, progress, queue_position: position, error, timings }) {
  if (status === 'queued') return position != null ? `queued (position ${position})` : 'queued';
  if (status === 'running') return `running: step ${progress.step} of ${progress.total}`;
  if (error) return `${status}: ${error.message}`;
  const seconds = timings.sampling_s;
  return seconds != null ? `${status}, sampled in ${seconds.toFixed(1)} s` : status;
}

// A job's new state: the progress bar (the current job's), its gallery entry and card.
function showJob(job) {
  if (job.id === state.current) {
    const bar = $('progress');
    bar.max = job.progress.total || 1;
    bar.value = job.status === 'succeeded' ? bar.max : Math.min(job.progress.step, bar.max);
    const label = $('job-status');
    label.textContent = describe(job);
    Object.assign(label.dataset, { status: job.status, job: job.id });
  }
  const entry = state.jobs.find((saved) => saved.id === job.id);
  if (!entry) return; // removed from the gallery meanwhile
  Object.assign(entry, { status: job.status, request: job.request, note: describe(job) });
  saveJobs();
  renderCard(entry);
}

// Follow a job to its end: its event stream, then GETs (the stream may have been cut short).
async function follow(jobId) {
  let job = null;
  try {
    await readEvents(jobId, (name, data) => {
      const event = JSON.parse(data);
      if (name === 'error') throw Object.assign(new Error(event.detail), { title: 'Event stream' });
      if (event.request) showJob((job = event)); // {id, status: "expired"} has no request
    });
  } catch (error) {
    if (jobId === state.current) showError(error);
  }
  while (!job || !terminal(job.status)) {
    if (job) await new Promise((resolve) => setTimeout(resolve, 1000));
    job = await (await api(`/v1/jobs/${jobId}`)).json();
    showJob(job);
  }
  return job;
}

// ---- Gallery ------------------------------------------------------------------------------
function loadJobs() {
  try { return JSON.parse(localStorage.getItem(JOBS_STORE)) || []; } catch { return []; }
}

function saveJobs() {
  state.jobs = state.jobs.slice(0, MAX_JOBS);
  localStorage.setItem(JOBS_STORE, JSON.stringify(state.jobs));
}

function params(request) {
  if (!request.prompt) return '';
  const parts = [request.task, `${request.width}x${request.height}`, `${request.steps} steps`,
    request.sampler, `guidance ${request.guidance_scale}`, `seed ${request.seed}`, request.model];
  if (request.task !== 'txt2img') parts.push(`strength ${request.strength}`);
  if (request.negative_prompt) parts.push(`negative: ${request.negative_prompt}`);
  return parts.join(' · ');
}

function renderCard(entry) {
  let card = state.cards.get(entry.id);
  if (!card) {
    card = $('card-template').content.firstElementChild.cloneNode(true);
    card.dataset.jobId = entry.id;
    card.querySelector('.remove').addEventListener('click', () => removeJob(entry.id));
    state.cards.set(entry.id, card);
    $('gallery').prepend(card);
  }
  const request = entry.request || {};
  Object.assign(card.dataset, { task: request.task || '', status: entry.status || '' });
  card.querySelector('.prompt').textContent = request.prompt || '';
  card.querySelector('.params').textContent = params(request);
  card.querySelector('.state').textContent = entry.note || entry.status || '';
  if (entry.status === 'succeeded' && !card.dataset.loaded) loadImages(card, entry);
}

async function loadImages(card, entry) {
  card.dataset.loaded = 'yes';
  const box = card.querySelector('.images');
  for (let index = 0; index < (entry.request.num_images || 1); index++) {
    try {
      const blob = await (await api(`/v1/jobs/${entry.id}/images/${index}`)).blob();
      const img = el('img');
      img.alt = `image ${index} of job ${entry.id}`;
      img.src = URL.createObjectURL(blob);
      box.append(img);
    } catch (error) {
      box.replaceChildren(el('p', `image unavailable: ${error.message}`));
      delete card.dataset.loaded; // tried again when the key changes
      return;
    }
  }
}

function removeJob(jobId) {
  const card = state.cards.get(jobId);
  for (const img of card.querySelectorAll('img')) URL.revokeObjectURL(img.src);
  card.remove();
  state.cards.delete(jobId);
  state.jobs = state.jobs.filter((entry) => entry.id !== jobId);
  saveJobs();
}

// Fetch what a saved job lacks: images of a finished one, the progress of a running one.
function resume(entry) {
  const card = state.cards.get(entry.id);
  const failed = (error) => { card.querySelector('.state').textContent = error.message; };
  if (!terminal(entry.status)) follow(entry.id).catch(failed);
  else if (entry.status === 'succeeded' && !card.dataset.loaded) loadImages(card, entry);
}

// ---- Init image and mask ------------------------------------------------------------------
function setInit(file) {
  const reader = new FileReader();
  reader.onload = () => {
    const image = new Image();
    image.onload = () => {
      state.init = reader.result; // a data: URL, which the API takes as it is
      for (const canvas of [$('init-canvas'), $('mask-canvas')]) {
        canvas.width = image.naturalWidth;
        canvas.height = image.naturalHeight;
      }
      $('init-canvas').getContext('2d').drawImage(image, 0, 0);
      clearMask();
      $('stack').hidden = false;
    };
    image.onerror = () => showError(fieldError('init_image', 'the browser cannot read this image'));
    image.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function clearMask() {
  const canvas = $('mask-canvas');
  canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  state.painted = false;
}

// Paint white on the mask canvas, which is shown scaled over the init image.
function paintMask() {
  const canvas = $('mask-canvas');
  const context = canvas.getContext('2d');
  let previous = null;
  const stroke = (event) => {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width; // image pixels per CSS pixel
    const here = { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale };
    Object.assign(context, { strokeStyle: '#fff', fillStyle: '#fff', lineCap: 'round',
      lineJoin: 'round', lineWidth: Number($('brush').value) * scale });
    context.beginPath();
    if (previous) {
      context.moveTo(previous.x, previous.y);
      context.lineTo(here.x, here.y);
      context.stroke();
    } else {
      context.arc(here.x, here.y, context.lineWidth / 2, 0, 2 * Math.PI);
      context.fill();
    }
    previous = here;
    state.painted = true;
  };
  canvas.addEventListener('pointerdown', (event) => {
    if (field('task').value !== 'inpaint') return;
    canvas.setPointerCapture(event.pointerId);
    previous = null;
    stroke(event);
  });
  canvas.addEventListener('pointermove', (event) => { if (previous) stroke(event); });
  for (const name of ['pointerup', 'pointercancel']) {
    canvas.addEventListener(name, () => { previous = null; });
  }
}

// The mask as the API reads it: the init image's size, white (painted) = repaint, black = keep.
function maskImage() {
  const painted = $('mask-canvas');
  const mask = Object.assign(el('canvas'), { width: painted.width, height: painted.height });
  const context = mask.getContext('2d');
  context.fillStyle = '#000';
  context.fillRect(0, 0, mask.width, mask.height);
  context.drawImage(painted, 0, 0);
  return mask.toDataURL('image/png');
}

function taskChanged() {
  const task = field('task').value;
  $('image-panel').hidden = $('size-note').hidden = task === 'txt2img';
  field('width').disabled = field('height').disabled = task !== 'txt2img';
  $('mask-tools').hidden = $('mask-note').hidden = task !== 'inpaint';
  $('mask-canvas').classList.toggle('painting', task === 'inpaint');
  field('strength').value = task === 'inpaint' ? '1' : '0.75'; // the API's defaults
}

// ---- Submitting ---------------------------------------------------------------------------
// The JSON body; empty fields are left out (the API's defaults), the API checks every bound.
function requestBody(task) {
  const number = (name) => (field(name).value === '' ? undefined : Number(field(name).value));
  const body = {
    prompt: field('prompt').value, negative_prompt: field('negative_prompt').value,
    steps: number('steps'), guidance_scale: number('guidance_scale'), seed: number('seed'),
    sampler: field('sampler').value || undefined,
  };
  if (task === 'txt2img') return { ...body, width: number('width'), height: number('height') };
  if (!state.init) throw fieldError('init_image', 'choose an init image');
  Object.assign(body, { init_image: state.init, strength: number('strength') });
  if (task === 'img2img') return body;
  if (!state.painted) throw fieldError('mask_image', 'paint the area to repaint over the image');
  return { ...body, mask_image: maskImage(), keep_unmasked: field('keep_unmasked').checked };
}

async function submit(event) {
  event.preventDefault();
  clearError();
  const task = field('task').value;
  $('submit').disabled = true; // until the job is queued; then the next may follow it
  let job;
  try {
    const body = JSON.stringify(requestBody(task));
    const headers = { 'Content-Type': 'application/json' };
    job = await (await api(`/v1/${task}`, { method: 'POST', headers, body })).json();
  } catch (error) {
    return showError(error);
  } finally {
    $('submit').disabled = false;
  }
  state.current = job.id;
  state.jobs.unshift({ id: job.id });
  showJob(job);
  follow(job.id).catch((error) => { if (job.id === state.current) showError(error); });
}

// ---- Start-up: samplers and tasks from /v1/models (with the key), the saved gallery ------
async function loadModels() {
  try {
    const { data } = await (await api('/v1/models')).json();
    const model = data.find((entry) => entry.default) || data[0];
    const sampler = field('sampler');
    const chosen = sampler.value;
    const names = model.samplers.map((name) => new Option(name));
    sampler.replaceChildren(new Option('default', ''), ...names);
    sampler.value = model.samplers.includes(chosen) ? chosen : '';
    for (const option of field('task').options) {
      option.disabled = Boolean(model.tasks && !model.tasks.includes(option.value));
    }
    $('models-status').textContent = data.map((entry) =>
      `${entry.name}: ${entry.workers} worker(s), ${entry.queue_depth} queued`).join('; ');
  } catch (error) {
    $('models-status').textContent = `models: ${error.message}`;
  }
}

function start() {
  const key = $('api-key');
  key.value = localStorage.getItem(KEY_STORE) || '';
  key.addEventListener('change', () => {
    localStorage.setItem(KEY_STORE, key.value.trim());
    loadModels();
    state.jobs.forEach(resume);
  });
  form.addEventListener('submit', submit);
  field('task').addEventListener('change', taskChanged);
  $('init-file').addEventListener('change', (event) => {
    if (event.target.files.length) setInit(event.target.files[0]);
  });
  $('clear-mask').addEventListener('click', clearMask);
  paintMask();
  taskChanged();
  [...state.jobs].reverse().forEach(renderCard); // prepended: the newest ends on top
  state.jobs.forEach(resume);
  loadModels();
}

start();
