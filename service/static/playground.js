// ldm-serve playground, the page: the form, the mask painted on a canvas, the gallery. The API
// key and this browser's jobs live in localStorage; every call to the API goes through api.js;
// the sample task's fields (a model without text) are sample.js's.
import {
  Client, describe, maskImage, params, readImage, requestBody, runs, subject, terminal,
  upscaledSize,
} from './api.js';
import { showSampleMode } from './sample.js';

const KEY_STORE = 'ldm-serve.apiKey';
const JOBS_STORE = 'ldm-serve.jobs';
const MAX_JOBS = 50; // gallery entries kept, newest first
const $ = (id) => document.getElementById(id);
const form = $('generate');
const field = (name) => form.elements.namedItem(name);
const client = new Client(() => $('api-key').value);
const state = {
  current: null, init: null, upscale: null, painted: false, jobs: loadJobs(), cards: new Map(),
  model: null, // the served model, as /v1/models describes it
};

function el(tag, text) {
  const element = document.createElement(tag);
  if (text != null) element.textContent = text;
  return element;
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

function follow(jobId) {
  const streamFailed = (error) => { if (jobId === state.current) showError(error); };
  return client.follow(jobId, showJob, streamFailed);
}

// ---- Gallery ------------------------------------------------------------------------------
function loadJobs() {
  try { return JSON.parse(localStorage.getItem(JOBS_STORE)) || []; } catch { return []; }
}

function saveJobs() {
  state.jobs = state.jobs.slice(0, MAX_JOBS);
  localStorage.setItem(JOBS_STORE, JSON.stringify(state.jobs));
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
  card.querySelector('.prompt').textContent = subject(request);
  card.querySelector('.params').textContent = params(request);
  card.querySelector('.state').textContent = entry.note || entry.status || '';
  if (entry.status === 'succeeded' && !card.dataset.loaded) loadImages(card, entry);
}

async function loadImages(card, entry) {
  card.dataset.loaded = 'yes';
  const box = card.querySelector('.images');
  for (let index = 0; index < (entry.request.num_images || 1); index++) {
    try {
      const img = el('img');
      img.alt = `image ${index} of job ${entry.id}`;
      img.src = await client.imageUrl(entry.id, index);
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

// ---- Uploads, the mask --------------------------------------------------------------------
async function setInit(file) {
  const { url, image } = await readImage(file, 'init_image');
  state.init = url;
  for (const canvas of [$('init-canvas'), $('mask-canvas')]) {
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
  }
  $('init-canvas').getContext('2d').drawImage(image, 0, 0);
  clearMask();
  $('stack').hidden = false;
}

// The image to upscale, and the size of the job's output.
async function setUpscale(file) {
  const { url, image } = await readImage(file, 'image');
  state.upscale = url;
  Object.assign($('upscale-preview'), { src: url, hidden: false });
  const [width, height] = upscaledSize(image);
  $('upscale-size').textContent =
    `${image.naturalWidth}x${image.naturalHeight} in, ${width}x${height} out`;
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

function taskChanged() {
  const task = field('task').value;
  const init = task === 'img2img' || task === 'inpaint';
  $('image-panel').hidden = $('size-note').hidden = !init;
  $('upscale-panel').hidden = task !== 'upscale';
  field('width').disabled = field('height').disabled = !['txt2img', 'sample'].includes(task);
  $('mask-tools').hidden = $('mask-note').hidden = task !== 'inpaint';
  $('mask-canvas').classList.toggle('painting', task === 'inpaint');
  field('strength').value = task === 'inpaint' ? '1' : '0.75'; // the API's defaults
  showSampleMode(task, state.model, client);
}

// ---- Submitting ---------------------------------------------------------------------------
// The form's fields by name: as typed (checkboxes: checked), the uploads as data: URLs or null.
function formFields() {
  const painted = state.painted ? maskImage($('mask-canvas')) : null;
  const fields = { init_image: state.init, mask_image: painted, image: state.upscale };
  for (const { name, type, value, checked } of form.elements) {
    if (name && type !== 'file') fields[name] = type === 'checkbox' ? checked : value;
  }
  return fields;
}

async function submit(event) {
  event.preventDefault();
  clearError();
  const task = field('task').value;
  $('submit').disabled = true; // until the job is queued; then the next may follow it
  let job;
  try {
    job = await client.submit(task, requestBody(task, formFields()));
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
    const { data, served } = await client.models();
    state.model = served;
    const sampler = field('sampler');
    const chosen = sampler.value;
    const names = served.samplers.map((name) => new Option(name));
    sampler.replaceChildren(new Option('default', ''), ...names);
    sampler.value = served.samplers.includes(chosen) ? chosen : '';
    const task = field('task');
    for (const option of task.options) option.disabled = !runs(served, option.value);
    const first = [...task.options].find((option) => !option.disabled);
    if (task.selectedOptions[0].disabled && first) { // e.g. an upscaler: upscale only
      task.value = first.value;
      taskChanged();
    } else showSampleMode(task.value, served, client); // its size, its class names
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
  for (const [input, set] of [['init-file', setInit], ['upscale-file', setUpscale]]) {
    $(input).addEventListener('change', (event) => {
      if (event.target.files.length) set(event.target.files[0]).catch(showError);
    });
  }
  $('clear-mask').addEventListener('click', clearMask);
  paintMask();
  taskChanged();
  [...state.jobs].reverse().forEach(renderCard); // prepended: the newest ends on top
  state.jobs.forEach(resume);
  loadModels();
}

start();
