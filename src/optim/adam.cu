// Adam's two fused steps for one f32 variable of n values (src/optim/adam.rs has the same
// arithmetic for the CPU). `moments` holds the first moments, then the second: 2n values.

extern "C" __global__ void adam_moments(float *moments, const float *grad, unsigned int n,
                                        float beta1, float one_minus_beta1, float beta2,
                                        float one_minus_beta2) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = grad[i];
        moments[i] = moments[i] * beta1 + g * one_minus_beta1;
        moments[n + i] = moments[n + i] * beta2 + (g * g) * one_minus_beta2;
    }
}

extern "C" __global__ void adam_update(float *theta, const float *moments, unsigned int n,
                                       float decay, float lr, float scale_m, float scale_v,
                                       float eps) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float m_hat = moments[i] * scale_m;
        float v_hat = moments[n + i] * scale_v;
        theta[i] = theta[i] * decay - (m_hat / (sqrtf(v_hat) + eps)) * lr;
    }
}
