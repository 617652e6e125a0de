// ldm-serve playground, its side of the native API (/v1/...): the client (the key in an
// Authorization header, errors read as application/problem+json, a job followed through its
// server-sent events read with fetch(), since EventSource cannot send an Authorization header,
// then polled; images as blob: URLs), uploads in the API's encodings, and the API's vocabulary
// (request bodies per task, jobs in words). No element of the page is read or written here: the
// form, the painting, the gallery and localStorage are playground.js's.

export const UPSCALE_FACTOR = 4; // the upscale task's output side / input side
const POLL_MS = 1000;

export class Client {
  // getKey: () => the API key (empty: none sent), read on every request.
  constructor(getKey) {
    this.getKey = getKey;
  }

  async fetch(path, options = {}) {
    const headers = new Headers(options.headers);
    const key = this.getKey().trim();
    if (key) headers.set('Authorization', `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (!response.ok) throw await problem(response);
    return response;
  }

  async json(path, options) {
    return (await this.fetch(path, options)).json();
  }

  // Queue a job: POST /v1/{task} with a JSON body; the job as the API answers it (202).
  submit(task, body) {
    const headers = { 'Content-Type': 'application/json' };
    return this.json(`/v1/${task}`, { method: 'POST', headers, body: JSON.stringify(body) });
  }

  // One of a job's images as a blob: URL (img-src cannot send the key); revoke it when done.
  async imageUrl(jobId, index) {
    const blob = await (await this.fetch(`/v1/jobs/${jobId}/images/${index}`)).blob();
    return URL.createObjectURL(blob);
  }

  // GET /v1/models: every model, and the one requests go to (the default, else the first).
  async models() {
    const { data } = await this.json('/v1/models');
    return { data, served: data.find((entry) => entry.default) || data[0] };
  }

  // A class-conditional model's class names by index (GET /v1/models/{name}/classes).
  async classes(model) {
    return (await this.json(`/v1/models/${encodeURIComponent(model)}/classes`)).data;
  }

  // A job's server-sent events, parsed from the fetch() body: onEvent(name, data) per event.
  // Events end with a blank line; `event:` names one, `data:` lines carry it, `:` is a comment.
  async events(jobId, onEvent) {
    const headers = { Accept: 'text/event-stream' };
    const response = await this.fetch(`/v1/jobs/${jobId}/events`, { headers });
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

  // Follow a job to its end: onJob(job) on each new state from its event stream, then from GETs
  // (the stream may fail or be cut short: onStreamError(error) says why). The last job state.
  async follow(jobId, onJob, onStreamError) {
    let job = null;
    try {
      await this.events(jobId, (name, data) => {
        const event = JSON.parse(data);
        const title = 'Event stream';
        if (name === 'error') throw Object.assign(new Error(event.detail), { title });
        if (event.request) onJob((job = event)); // {id, status: "expired"} has no request
      });
    } catch (error) {
      onStreamError(error);
    }
    while (!job || !terminal(job.status)) {
      if (job) await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      onJob((job = await this.json(`/v1/jobs/${jobId}`)));
    }
    return job;
  }
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

// The same shape for what the page finds wrong before sending.
export function fieldError(name, message) {
  const fields = [{ field: name, message }];
  return Object.assign(new Error(message), { title: 'Check the form', fields });
}

// ---- Uploads, as the API takes them ------------------------------------------------------
// A chosen file as a data: URL (which the API takes as it is) and the image it decodes to; a
// file the browser cannot decode is a field error on `name`.
export function readImage(file, name) {
  return new Promise((resolve, reject) => {
    const unreadable = () => reject(fieldError(name, 'the browser cannot read this image'));
    const reader = new FileReader();
    reader.onerror = unreadable;
    reader.onload = () => {
      const image = new Image();
      image.onload = () => resolve({ url: reader.result, image });
      image.onerror = unreadable;
      image.src = reader.result;
    };
    reader.readAsDataURL(file);
  });
}

// A mask painted in white on a transparent canvas as the API reads it: a PNG data: URL of the
// canvas's size, white (painted) = repaint, black = keep.
export function maskImage(painted) {
  const mask = document.createElement('canvas');
  Object.assign(mask, { width: painted.width, height: painted.height });
  const context = mask.getContext('2d');
  context.fillStyle = '#000';
  context.fillRect(0, 0, mask.width, mask.height);
  context.drawImage(painted, 0, 0);
  return mask.toDataURL('image/png');
}

// An upscale job's output size from its image (no width/height given): the image's rounded
// down to a multiple of 8, times the factor.
export function upscaledSize(image) {
  const side = (pixels) => (pixels - (pixels % 8)) * UPSCALE_FACTOR;
  return [side(image.naturalWidth), side(image.naturalHeight)];
}

// ---- The API's vocabulary -----------------------------------------------------------------
// The JSON body of POST /v1/{task} from the form's fields (text as typed, uploads as data: URLs):
// empty fields are left out (the API's defaults) and the API checks every bound; a missing
// upload is a field error here. Sampling (a model without text) sends no prompt.
export function requestBody(task, fields) {
  const number = (name) => (fields[name] === '' ? undefined : Number(fields[name]));
  const common = {
    steps: number('steps'), guidance_scale: number('guidance_scale'), seed: number('seed'),
    sampler: fields.sampler || undefined,
  };
  const size = { width: number('width'), height: number('height') };
  if (task === 'sample') return { ...common, ...size, class_label: classLabel(fields.class_label) };
  const body = { prompt: fields.prompt, negative_prompt: fields.negative_prompt, ...common };
  if (task === 'txt2img') return { ...body, ...size };
  if (task === 'upscale') {
    if (!fields.image) throw fieldError('image', 'choose an image to upscale');
    return { ...body, image: fields.image, noise_level: number('noise_level') };
  }
  if (!fields.init_image) throw fieldError('init_image', 'choose an init image');
  Object.assign(body, { init_image: fields.init_image, strength: number('strength') });
  if (task === 'img2img') return body;
  const unpainted = 'paint the area to repaint over the image';
  if (!fields.mask_image) throw fieldError('mask_image', unpainted);
  return { ...body, mask_image: fields.mask_image, keep_unmasked: fields.keep_unmasked };
}

// A class as typed or picked from the list: an index ("3", or "3: goldfish" as the list offers
// it) as a number, anything else as a name for the API to resolve (near matches in its 422 on a
// miss); empty: none (an unconditional model's, or the API says a class is needed).
export function classLabel(text = '') {
  const typed = text.trim();
  const index = /^(\d+)(:.*)?$/s.exec(typed);
  return index ? Number(index[1]) : typed || undefined;
}

// The class picker's choices from a model's class names by index: "index: first synonym"
// (ImageNet's names are comma-separated synonyms; all of them are the label), the index alone
// for an unnamed class.
export function classChoices(names) {
  return names.map((name, index) => {
    const first = name.split(',')[0].trim();
    const value = first ? `${index}: ${first}` : String(index);
    return { value, label: first === name ? '' : name };
  });
}

// Whether `model` (from /v1/models) runs `task`. Its tasks are null until one of its workers has
// started: then text-to-image's are offered (an upscaler or a model without text runs nothing
// else, and says so once started).
export function runs(model, task) {
  return model.tasks ? model.tasks.includes(task) : !['upscale', 'sample'].includes(task);
}

export const terminal = (status) => !['queued', 'running'].includes(status);

// A job's state in words.
export function describe({ status, progress, queue_position: position, error, timings }) {
  if (status === 'queued') return position != null ? `queued (position ${position})` : 'queued';
  if (status === 'running') return `running: step ${progress.step} of ${progress.total}`;
  if (error) return `${status}: ${error.message}`;
  const seconds = timings.sampling_s;
  return seconds != null ? `${status}, sampled in ${seconds.toFixed(1)} s` : status;
}

// What a job's images are of: its prompt, a sample's class (empty before the API has answered).
export function subject(request) {
  if (request.prompt) return request.prompt;
  if (request.task !== 'sample') return request.task ? '(no prompt)' : '';
  return request.class_label != null ? `class ${request.class_label}` : '(unconditional)';
}

// A job's resolved request in one line (empty before the API has answered).
export function params(request) {
  if (!request.task) return '';
  const size = `${request.width}x${request.height}`;
  const parts = [request.task, request.task === 'upscale' ? `${size} (x${UPSCALE_FACTOR})` : size,
    `${request.steps} steps`, request.sampler, `guidance ${request.guidance_scale}`,
    `seed ${request.seed}`, request.model];
  const init = request.task === 'img2img' || request.task === 'inpaint';
  if (request.task === 'upscale') parts.push(`noise level ${request.noise_level}`);
  else if (init) parts.push(`strength ${request.strength}`);
  if (request.negative_prompt) parts.push(`negative: ${request.negative_prompt}`);
  return parts.join(' · ');
}
