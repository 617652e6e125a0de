// ldm-serve playground, the sample task (POST /v1/sample: the LDM paper's models without text):
// the prompt fields give way to a class picker for a class-conditional model (its class names,
// GET /v1/models/{name}/classes, offered in a <datalist>; an index or a name typed), and the
// form's placeholders say what empty fields take: the model's own size, guidance 1.5.
import { classChoices } from './api.js';

export const SAMPLE_GUIDANCE = 1.5; // the API's default for /v1/sample (the paper's Tab. 3)
const $ = (id) => document.getElementById(id);
const field = (name) => $('generate').elements.namedItem(name);

// The form for `task` as `model` (the served one from /v1/models; null before it answered)
// takes it; `client` fetches the class names once per model.
export function showSampleMode(task, model, client) {
  const sample = task === 'sample';
  const classes = sample && model?.num_classes != null;
  $('text-fields').hidden = sample;
  $('class-picker').hidden = !classes;
  $('sample-note').hidden = !sample;
  const size = sample && model?.native_size ? String(model.native_size) : 'default';
  field('width').placeholder = field('height').placeholder = size;
  field('guidance_scale').placeholder = sample ? String(SAMPLE_GUIDANCE) : 'default';
  if (!sample) return;
  $('sample-note').textContent = note(model, classes);
  if (classes) loadClasses(model, client);
}

function note(model, classes) {
  const side = model?.native_size;
  const size = side ? `the model's ${side}x${side}` : "the model's size";
  if (!classes) return `Unconditional: no input but the seed; ${size} unless given.`;
  return `Class-conditional: ${model.num_classes} classes, by index or by name (the API ` +
    `offers near matches for a misspelt one); ${size} and guidance ${SAMPLE_GUIDANCE} unless ` +
    'given.';
}

// The picker's choices from the model's class names; a failure is said on the picker and the
// names are asked for again next time (e.g. once an API key is entered).
async function loadClasses(model, client) {
  const input = field('class_label');
  input.placeholder = `an index 0-${model.num_classes - 1} or a name`;
  const list = $('class-names');
  if (list.dataset.model === model.name) return;
  list.dataset.model = model.name;
  try {
    const choices = classChoices(await client.classes(model.name));
    list.replaceChildren(...choices.map(({ value, label }) => new Option(label, value)));
  } catch (error) {
    delete list.dataset.model;
    list.replaceChildren();
    input.placeholder = `an index 0-${model.num_classes - 1} (names: ${error.message})`;
  }
}
