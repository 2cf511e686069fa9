/*
 * dsfs's shim over the CORTX Motr client API: a few plain C functions that the Rust side
 * (src/backend/motr/sys.rs) declares. Compiled by build.rs only when a Motr tree or install
 * is found. Every function returns 0 or a negative errno and never calls back into Rust.
 */
#include "motr/client.h"
#include "motr/idx.h"
#include "motr/client_internal.h"  /* m0c_motr, M0_DEFAULT_BUF_SHIFT */
#include "net/net.h"              /* M0_NET_TM_RECV_QUEUE_DEF_LEN */
#include "rpc/rpc_machine.h"      /* M0_RPC_DEF_MAX_RPC_MSG_SIZE */
#include "lib/memory.h"
#include "lib/vec.h"
#include "lib/thread.h"
#include "fid/fid.h"
#include "cas/cas.h"                /* m0_dix_fid_type */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct dsfs_m0 {
	struct m0_client        *client;
	struct m0_container      container;
	struct m0_config         conf;
	struct m0_idx_dix_config dix;
	char                    *strings[4];
};

/*
 * A thread that did not initialise the client is adopted before its first call, without a
 * per-thread addb2 machine (m0_thread_adopt would register one, and m0_client_fini panics
 * while any adopted thread's machine is still registered; threads are never shunned here).
 */
static __thread struct m0_thread dsfs_thread;
static __thread int              dsfs_adopted;

static void adopt(struct dsfs_m0 *m)
{
	if (!dsfs_adopted) {
		memset(&dsfs_thread, 0, sizeof dsfs_thread);
		(void)m0_thread_arch_adopt(&dsfs_thread, m->client->m0c_motr, false);
		dsfs_adopted = 1;
	}
}

int dsfs_m0_init(const char *local, const char *ha, const char *profile,
		 const char *process, struct dsfs_m0 **out)
{
	struct dsfs_m0 *m = calloc(1, sizeof *m);
	int             rc;
	int             i;

	if (m == NULL)
		return -ENOMEM;
	m->strings[0] = strdup(local);
	m->strings[1] = strdup(ha);
	m->strings[2] = strdup(profile);
	m->strings[3] = strdup(process);
	for (i = 0; i < 4; ++i) {
		if (m->strings[i] == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	m->conf.mc_is_oostore            = true;
	m->conf.mc_is_read_verify        = false;
	m->conf.mc_is_addb_init          = false;
	m->conf.mc_local_addr            = m->strings[0];
	m->conf.mc_ha_addr               = m->strings[1];
	m->conf.mc_profile               = m->strings[2];
	m->conf.mc_process_fid           = m->strings[3];
	m->conf.mc_tm_recv_queue_min_len = M0_NET_TM_RECV_QUEUE_DEF_LEN;
	m->conf.mc_max_rpc_msg_size      = M0_RPC_DEF_MAX_RPC_MSG_SIZE;
	m->conf.mc_layout_id             = 0;
	m->dix.kc_create_meta            = false;
	m->conf.mc_idx_service_id        = M0_IDX_DIX;
	m->conf.mc_idx_service_conf      = &m->dix;

	rc = m0_client_init(&m->client, &m->conf, true);
	if (rc != 0)
		goto fail;
	m0_container_init(&m->container, NULL, &M0_UBER_REALM, m->client);
	rc = m->container.co_realm.re_entity.en_sm.sm_rc;
	if (rc != 0) {
		m0_client_fini(m->client, true);
		goto fail;
	}
	/* The initialising thread is already Motr's. */
	dsfs_adopted = 1;
	*out = m;
	return 0;
fail:
	for (i = 0; i < 4; ++i)
		free(m->strings[i]);
	free(m);
	return rc;
}

void dsfs_m0_fini(struct dsfs_m0 *m)
{
	int i;

	adopt(m);
	m0_client_fini(m->client, true);
	for (i = 0; i < 4; ++i)
		free(m->strings[i]);
	free(m);
}

static int launch_wait(struct m0_op *op)
{
	int rc;

	m0_op_launch(&op, 1);
	rc = m0_op_wait(op, M0_BITS(M0_OS_FAILED, M0_OS_STABLE), M0_TIME_NEVER);
	if (rc == 0)
		rc = m0_rc(op);
	m0_op_fini(op);
	m0_op_free(op);
	return rc;
}

static void idx_init(struct dsfs_m0 *m, struct m0_idx *idx, uint64_t hi, uint64_t lo)
{
	struct m0_fid fid = M0_FID_INIT(hi, lo);

	m0_fid_tassume(&fid, &m0_dix_fid_type);
	memset(idx, 0, sizeof *idx);
	m0_idx_init(idx, &m->container.co_realm, (struct m0_uint128 *)&fid);
}

int dsfs_m0_idx_create(struct dsfs_m0 *m, uint64_t hi, uint64_t lo)
{
	struct m0_idx idx;
	struct m0_op *op = NULL;
	int           rc;

	adopt(m);
	idx_init(m, &idx, hi, lo);
	rc = m0_entity_create(NULL, &idx.in_entity, &op);
	if (rc == 0)
		rc = launch_wait(op);
	m0_idx_fini(&idx);
	return rc;
}

/*
 * The result of a GET or NEXT: keys and values Motr allocated, freed by dsfs_m0_recs_free.
 */
struct dsfs_recs {
	struct m0_bufvec keys;
	struct m0_bufvec vals;
	int32_t         *rcs;
	uint32_t         nr;
};

void dsfs_m0_recs_free(struct dsfs_recs *r)
{
	if (r == NULL)
		return;
	m0_bufvec_free(&r->keys);
	m0_bufvec_free(&r->vals);
	m0_free(r->rcs);
	m0_free(r);
}

/* Record i: its code, and its key and value (NULL when absent). */
int32_t dsfs_m0_recs_get(const struct dsfs_recs *r, uint32_t i,
			 const void **key, uint64_t *klen,
			 const void **val, uint64_t *vlen)
{
	*key = r->keys.ov_buf[i];
	*klen = r->keys.ov_vec.v_count[i];
	*val = r->vals.ov_buf[i];
	*vlen = r->vals.ov_vec.v_count[i];
	return r->rcs[i];
}

/*
 * PUT (vals != NULL) or DEL (vals == NULL) of nr records from caller buffers; rcs gets one
 * code per record.
 */
int dsfs_m0_idx_write(struct dsfs_m0 *m, uint64_t hi, uint64_t lo, uint32_t nr,
		      const void *const *keys, const uint64_t *klens,
		      const void *const *vals, const uint64_t *vlens,
		      uint32_t flags, int32_t *rcs)
{
	struct m0_idx    idx;
	struct m0_op    *op = NULL;
	struct m0_bufvec k;
	struct m0_bufvec v;
	uint32_t         i;
	int              rc;

	adopt(m);
	if (nr == 0)
		return -EINVAL;
	rc = m0_bufvec_empty_alloc(&k, nr);
	if (rc != 0)
		return rc;
	if (vals != NULL) {
		rc = m0_bufvec_empty_alloc(&v, nr);
		if (rc != 0) {
			m0_bufvec_free2(&k);
			return rc;
		}
	}
	for (i = 0; i < nr; ++i) {
		k.ov_buf[i] = (void *)keys[i];
		k.ov_vec.v_count[i] = klens[i];
		if (vals != NULL) {
			v.ov_buf[i] = (void *)vals[i];
			v.ov_vec.v_count[i] = vlens[i];
		}
	}
	idx_init(m, &idx, hi, lo);
	rc = m0_idx_op(&idx, vals != NULL ? M0_IC_PUT : M0_IC_DEL, &k,
		       vals != NULL ? &v : NULL, rcs, flags, &op);
	if (rc == 0)
		rc = launch_wait(op);
	m0_idx_fini(&idx);
	m0_bufvec_free2(&k);
	if (vals != NULL)
		m0_bufvec_free2(&v);
	return rc;
}

/*
 * GET of nr keys (start == NULL) or NEXT of up to nr records from start (keys == NULL).
 */
int dsfs_m0_idx_read(struct dsfs_m0 *m, uint64_t hi, uint64_t lo, uint32_t nr,
		     const void *const *keys, const uint64_t *klens,
		     const void *start, uint64_t start_len, uint32_t flags,
		     struct dsfs_recs **out)
{
	struct m0_idx     idx;
	struct m0_op     *op = NULL;
	struct dsfs_recs *r;
	uint32_t          i;
	int               rc;
	int               next = keys == NULL;

	adopt(m);
	if (nr == 0)
		return -EINVAL;
	M0_ALLOC_PTR(r);
	if (r == NULL)
		return -ENOMEM;
	r->nr = nr;
	M0_ALLOC_ARR(r->rcs, nr);
	rc = r->rcs == NULL ? -ENOMEM : m0_bufvec_empty_alloc(&r->keys, nr);
	if (rc == 0)
		rc = m0_bufvec_empty_alloc(&r->vals, nr);
	/* Every key buffer is Motr's, so that m0_bufvec_free releases all of them. */
	for (i = 0; rc == 0 && i < (next ? 1 : nr); ++i) {
		const void *src = next ? start : keys[i];
		uint64_t    len = next ? start_len : klens[i];

		if (next && len == 0)
			break;
		r->keys.ov_buf[i] = m0_alloc(len == 0 ? 1 : len);
		if (r->keys.ov_buf[i] == NULL) {
			rc = -ENOMEM;
			break;
		}
		memcpy(r->keys.ov_buf[i], src, len);
		r->keys.ov_vec.v_count[i] = len;
	}
	if (rc == 0) {
		idx_init(m, &idx, hi, lo);
		rc = m0_idx_op(&idx, next ? M0_IC_NEXT : M0_IC_GET, &r->keys,
			       &r->vals, r->rcs, flags, &op);
		if (rc == 0)
			rc = launch_wait(op);
		m0_idx_fini(&idx);
	}
	if (rc != 0) {
		dsfs_m0_recs_free(r);
		return rc;
	}
	*out = r;
	return 0;
}

static void obj_init(struct dsfs_m0 *m, struct m0_obj *obj, uint64_t hi, uint64_t lo)
{
	struct m0_uint128 id = { .u_hi = hi, .u_lo = lo };

	memset(obj, 0, sizeof *obj);
	m0_obj_init(obj, &m->container.co_realm, &id, m0_client_layout_id(m->client));
}

int dsfs_m0_obj_create(struct dsfs_m0 *m, uint64_t hi, uint64_t lo)
{
	struct m0_obj obj;
	struct m0_op *op = NULL;
	int           rc;

	adopt(m);
	obj_init(m, &obj, hi, lo);
	rc = m0_entity_create(NULL, &obj.ob_entity, &op);
	if (rc == 0)
		rc = launch_wait(op);
	m0_obj_fini(&obj);
	return rc;
}

static int obj_open(struct m0_obj *obj)
{
	struct m0_op *op = NULL;
	int           rc;

	rc = m0_entity_open(&obj->ob_entity, &op);
	return rc == 0 ? launch_wait(op) : rc;
}

int dsfs_m0_obj_delete(struct dsfs_m0 *m, uint64_t hi, uint64_t lo)
{
	struct m0_obj obj;
	struct m0_op *op = NULL;
	int           rc;

	adopt(m);
	obj_init(m, &obj, hi, lo);
	rc = obj_open(&obj);
	if (rc == 0)
		rc = m0_entity_delete(&obj.ob_entity, &op);
	if (rc == 0)
		rc = launch_wait(op);
	m0_obj_fini(&obj);
	return rc;
}

uint32_t dsfs_m0_block_size(void)
{
	return 1u << M0_DEFAULT_BUF_SHIFT;
}

/* READ (write == 0) or WRITE of len bytes at off, both multiples of the block size. */
int dsfs_m0_obj_io(struct dsfs_m0 *m, uint64_t hi, uint64_t lo, int write,
		   uint64_t off, void *buf, uint64_t len)
{
	struct m0_obj      obj;
	struct m0_op      *op = NULL;
	struct m0_indexvec ext;
	struct m0_bufvec   data;
	struct m0_bufvec   attr;
	uint64_t           bs = dsfs_m0_block_size();
	uint32_t           nr = len / bs;
	uint32_t           i;
	int                rc;

	adopt(m);
	if (len == 0 || len % bs != 0 || off % bs != 0)
		return -EINVAL;
	rc = m0_indexvec_alloc(&ext, nr);
	if (rc != 0)
		return rc;
	rc = m0_bufvec_empty_alloc(&data, nr);
	if (rc != 0) {
		m0_indexvec_free(&ext);
		return rc;
	}
	rc = m0_bufvec_alloc(&attr, nr, 1);
	if (rc != 0) {
		m0_bufvec_free2(&data);
		m0_indexvec_free(&ext);
		return rc;
	}
	for (i = 0; i < nr; ++i) {
		ext.iv_index[i] = off + (uint64_t)i * bs;
		ext.iv_vec.v_count[i] = bs;
		data.ov_buf[i] = (char *)buf + (uint64_t)i * bs;
		data.ov_vec.v_count[i] = bs;
		attr.ov_vec.v_count[i] = 0;
	}
	obj_init(m, &obj, hi, lo);
	rc = obj_open(&obj);
	if (rc == 0)
		rc = m0_obj_op(&obj, write ? M0_OC_WRITE : M0_OC_READ, &ext, &data,
			       &attr, 0, 0, &op);
	if (rc == 0)
		rc = launch_wait(op);
	m0_obj_fini(&obj);
	m0_bufvec_free(&attr);
	m0_bufvec_free2(&data);
	m0_indexvec_free(&ext);
	return rc;
}
