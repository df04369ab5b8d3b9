// Greedy generation with transformers.js (Node, onnxruntime-node CPU) from an lfm2_onnx export folder.
//
//   node tests/clients/generate.mjs --model /abs/export/folder --ids '[[1,300,45],[1,5]]' \
//        [--dtype fp32|fp16] [--max-new-tokens 32]
//
// --ids is a JSON list of prompts (each a list of token ids; a single flat list is one prompt).
// Prompts run one after another with batch size 1, so no padding is involved. Without --dtype,
// transformers.js takes the dtype from config.json's "transformers.js_config", as a user would get.
//
// The folder is used exactly as lfm2_onnx.build wrote it: config.json (with its
// "transformers.js_config"), generation_config.json and onnx/model{,_fp16}.onnx(+_data).
// Nothing is fetched: remote models are off, so a missing file is an error, never a download.
// The last line on stdout is one JSON object:
//   {"generated": [[new token ids] per prompt], "dtype": ..., "versions": {...}}
// Everything else (transformers.js/onnxruntime logging) goes to stderr.

import path from 'node:path';
import { parseArgs } from 'node:util';

// Keep stdout clean for the JSON result: library chatter goes to stderr.
const stdoutLog = console.log;
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);
console.warn = (...args) => console.error(...args);

function fail(message) {
  console.error(`generate.mjs: ${message}`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    ids: { type: 'string' },
    dtype: { type: 'string' },
    'max-new-tokens': { type: 'string', default: '32' },
  },
  strict: true,
});

if (!values.model) fail('--model FOLDER is required');
if (!values.ids) fail("--ids '[...]' (a JSON list of token ids) is required");
const folder = path.resolve(values.model);
let ids;
try {
  ids = JSON.parse(values.ids);
} catch (e) {
  fail(`--ids is not JSON: ${e.message}`);
}
if (Array.isArray(ids) && ids.length > 0 && ids.every(Number.isInteger)) ids = [ids];
const isPrompt = (p) => Array.isArray(p) && p.length > 0 && p.every(Number.isInteger);
if (!Array.isArray(ids) || ids.length === 0 || !ids.every(isPrompt)) {
  fail('--ids must be a JSON list of non-empty lists of integer token ids');
}
const maxNewTokens = Number.parseInt(values['max-new-tokens'], 10);
if (!(maxNewTokens > 0)) fail('--max-new-tokens must be a positive integer');

const { env, AutoModelForCausalLM, Tensor } = await import('@huggingface/transformers');
const ort = await import('onnxruntime-node');

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(folder);

// The absolute path is not a hub id, so transformers.js reads the folder as given.
const options = { device: 'cpu', local_files_only: true };
if (values.dtype) options.dtype = values.dtype;
const model = await AutoModelForCausalLM.from_pretrained(folder, options);

const generated = [];
for (const prompt of ids) {
  const input_ids = new Tensor('int64', BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
  const attention_mask = new Tensor('int64', new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]);
  const output = await model.generate({
    input_ids,
    attention_mask,
    max_new_tokens: maxNewTokens,
    do_sample: false,
  });
  const sequences = output.sequences ?? output; // a Tensor [1, prompt + new]
  const sequence = Array.from(sequences.tolist()[0], Number);
  generated.push(sequence.slice(prompt.length));
}
await model.dispose();

stdoutLog(JSON.stringify({
  generated,
  dtype: values.dtype ?? model.config['transformers.js_config']?.dtype ?? null,
  versions: { transformers_js: env.version, onnxruntime_node: ort.env?.versions?.common ?? null },
}));
