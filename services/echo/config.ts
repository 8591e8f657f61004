import { baseConfigShape, loadConfig, type BaseConfig } from "../kit/index.js";

/** Echo needs only what every service reads. */
export function loadEchoConfig(env: Record<string, string | undefined>): BaseConfig {
  return loadConfig(baseConfigShape, env);
}
