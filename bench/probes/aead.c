/*
 * What sealing a frame costs with libsodium and with OpenSSL's EVP interface, warm and after the
 * thread has slept (cold caches), and on 64 KB super-frames: the figures behind the C data
 * path's choice of library by frame size (switch/violin/_datapath.c, LARGE).
 *
 *   cc -O2 -o /tmp/aead bench/probes/aead.c -lsodium -lcrypto && /tmp/aead
 */
#include <openssl/evp.h>
#include <sodium.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static unsigned char key[32], nonce[12], ad[20], tag[16], buf[70000];

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void evp_seal(EVP_CIPHER_CTX *ctx, size_t n) {
    int len;
    EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce);
    EVP_EncryptUpdate(ctx, NULL, &len, ad, sizeof ad);
    EVP_EncryptUpdate(ctx, buf, &len, buf, (int)n);
    EVP_EncryptFinal_ex(ctx, buf + len, &len);
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag);
}

int main(void) {
    if (sodium_init() < 0 || !crypto_aead_aes256gcm_is_available()) {
        fprintf(stderr, "libsodium's AES-256-GCM is not available on this CPU\n");
        return 1;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL);
    crypto_aead_aes256gcm_state st;
    crypto_aead_aes256gcm_beforenm(&st, key);
    const int sleeps[] = {0, 1000, 10000};
    for (int s = 0; s < 3; s++) {
        double evp = 0, sod = 0;
        const int rounds = 300;
        for (int i = 0; i < rounds; i++) {
            nonce[0] = (unsigned char)i;
            if (sleeps[s]) usleep(sleeps[s]);
            double t0 = now_ns();
            evp_seal(ctx, 108);
            double t1 = now_ns();
            if (sleeps[s]) usleep(sleeps[s]);
            double t2 = now_ns();
            crypto_aead_aes256gcm_encrypt_detached_afternm(buf, tag, NULL, buf, 108, ad, sizeof ad,
                                                           NULL, nonce, &st);
            double t3 = now_ns();
            evp += t1 - t0;
            sod += t3 - t2;
        }
        printf("108-byte frame, after %5d us asleep: OpenSSL EVP %.1f us, libsodium %.1f us\n",
               sleeps[s], evp / rounds / 1e3, sod / rounds / 1e3);
    }
    const int rounds = 3000;
    const size_t n = 65000;
    double t0 = now_ns();
    for (int i = 0; i < rounds; i++) evp_seal(ctx, n);
    double t1 = now_ns();
    for (int i = 0; i < rounds; i++)
        crypto_aead_aes256gcm_encrypt_detached_afternm(buf, tag, NULL, buf, n, ad, sizeof ad, NULL,
                                                       nonce, &st);
    double t2 = now_ns();
    printf("65,000-byte super-frame: OpenSSL EVP %.1f Gb/s, libsodium %.1f Gb/s\n",
           n * 8.0 * rounds / (t1 - t0), n * 8.0 * rounds / (t2 - t1));
    EVP_CIPHER_CTX_free(ctx);
    return 0;
}
