// The configuration's public face: load it, validate it, require a command, log it safely.

export {
  type Config,
  type ResourceRule,
  type SelectionOrder,
  type LogLevel,
  DEFAULT_CONFIG_FILE,
  defaultConfig,
  defaultHostName,
} from './schema.js';
export { parseDuration, parseByteSize, formatDuration } from './duration.js';
export { type ConfigFlags, type LoadConfigOptions, loadConfig, configFilePath, environmentOverrides } from './load.js';
export { type ValidateOptions, validateConfig, requireCommand, describeConfig, maskStoreUrl } from './validate.js';
